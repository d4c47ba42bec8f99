//! A hand-written SVG line chart of miss ratio against cache size: small
//! enough that the simulator needs no plotting dependency.

use std::fmt::Write;

/// One line of the chart: a label and one y value per x position.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Miss ratios in `0.0..=1.0`, one per cache size.
    pub values: Vec<f64>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const MARGIN_LEFT: f64 = 60.0;
const MARGIN_RIGHT: f64 = 130.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;

/// Colours for the series, in order (a colour-blind-safe palette).
const COLOURS: [&str; 8] = [
    "#d55e00", "#0072b2", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442", "#000000",
];

/// Renders a chart of `series` over the x positions `x_labels` (placed at
/// equal spacing, since cache sizes are a geometric-ish series). The y axis
/// runs from 0 to the largest value rounded up to a tenth.
pub fn miss_ratio_chart(title: &str, x_labels: &[String], series: &[Series]) -> String {
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let y_max = series
        .iter()
        .flat_map(|series| series.values.iter().copied())
        .fold(0.0f64, f64::max);
    let y_max = ((y_max * 10.0).ceil() / 10.0).clamp(0.1, 1.0);
    let x_of = |index: usize| {
        if x_labels.len() <= 1 {
            MARGIN_LEFT + plot_width / 2.0
        } else {
            MARGIN_LEFT + plot_width * index as f64 / (x_labels.len() - 1) as f64
        }
    };
    let y_of = |value: f64| MARGIN_TOP + plot_height * (1.0 - value.clamp(0.0, y_max) / y_max);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        MARGIN_LEFT + plot_width / 2.0,
        escape(title)
    );
    // Horizontal grid lines and y labels every tenth (or twentieth).
    let steps = if y_max <= 0.3 {
        (y_max * 20.0).round() as usize
    } else {
        (y_max * 10.0).round() as usize
    };
    for step in 0..=steps {
        let value = y_max * step as f64 / steps as f64;
        let y = y_of(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            MARGIN_LEFT + plot_width
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text>"#,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            value * 100.0
        );
    }
    for (index, label) in x_labels.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x_of(index),
            MARGIN_TOP + plot_height + 18.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">cache size (fraction of distinct blocks)</text>"#,
        MARGIN_LEFT + plot_width / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">miss ratio</text>"#,
        MARGIN_TOP + plot_height / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="black"/>"#
    );
    for (number, line) in series.iter().enumerate() {
        let colour = COLOURS[number % COLOURS.len()];
        let points: Vec<String> = line
            .values
            .iter()
            .enumerate()
            .map(|(index, &value)| format!("{:.1},{:.1}", x_of(index), y_of(value)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            points.join(" ")
        );
        for point in &points {
            let (x, y) = point.split_once(',').expect("formatted as x,y");
            let _ = writeln!(svg, r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#);
        }
        let legend_y = MARGIN_TOP + 10.0 + 20.0 * number as f64;
        let legend_x = MARGIN_LEFT + plot_width + 15.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{colour}" stroke-width="2"/>"#,
            legend_x + 20.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{}</text>"#,
            legend_x + 26.0,
            legend_y + 4.0,
            escape(&line.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards that the chart is well-formed enough to render: one polyline per
    // series, every label present and escaped.
    #[test]
    fn chart_has_every_series() {
        let labels: Vec<String> = ["1%", "10%"].iter().map(|s| s.to_string()).collect();
        let series = vec![
            Series {
                label: "lru".into(),
                values: vec![0.9, 0.5],
            },
            Series {
                label: "a<b".into(),
                values: vec![0.8, 0.4],
            },
        ];
        let svg = miss_ratio_chart("trace & size", &labels, &series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b"));
        assert!(svg.contains("trace &amp; size"));
    }
}
