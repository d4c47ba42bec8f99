//! `pagoda top`: a live view of one node, refreshed in place.
//!
//! Every interval it asks the node for its statistics (`NodeStat`), its
//! regions (`ListRegions`), and each region's statistics and replication
//! (`StatRegion`, `ReplicaStatus`). The node keeps only cumulative counters
//! (requests served, pages read and written per region), so every rate shown
//! is the difference between two polls divided by the time between them; the
//! node's requests per second leave out the requests this command itself
//! sent. The first poll is a baseline: every frame shown has rates.
//!
//! On a terminal the view takes the alternate screen and redraws in place
//! until `q`, Esc or Ctrl-C (or `--iterations`); off a terminal, or with
//! `--once`, it prints plain frames without escape codes, one per interval,
//! each ended by a blank line, so scripts and tests can read them.
//!
//! A node that cannot be reached or refuses at the start is an error. One
//! that goes away later is shown as unreachable, and each interval the
//! command dials it again.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pagoda::{Client, ClientError, ErrorCode, NodeStat, RegionStat, RegionState, ReplicaRole};

use crate::size::format_bytes;

/// The shortest --interval: polling faster mostly measures the poll.
const INTERVAL_MS_MIN: u64 = 50;
/// The longest --interval.
const INTERVAL_MS_MAX: u64 = 3_600_000;
/// How long one poll waits for each reply before the node counts as
/// unreachable.
const REPLY_TIMEOUT_MS: u64 = 5_000;
/// Most regions polled each interval (two requests each); the rest are
/// counted in a line of their own.
const REGIONS_POLLED_MAX: usize = 1_024;
/// How long the terminal view waits for a key before it looks for a new
/// frame (and for a signal asking it to stop).
const EVENT_WAIT_MS: u64 = 100;
/// Cells in the RAM bar.
const RAM_BAR_CELLS: usize = 30;
/// Frames the poller may have ready before the view takes them.
const FRAMES_QUEUED_MAX: usize = 2;

/// Arguments of `pagoda top`.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    node: crate::NodeAddress,
    /// How often to poll the node and redraw: `1s`, `200ms`, `1.5s`, `2m`
    /// (a plain number is seconds).
    #[arg(long, value_parser = parse_interval, default_value = "1s")]
    interval: Duration,
    /// Stop after this many frames (default: run until `q` or Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    iterations: Option<u64>,
    /// How to order the regions: by pages read and written per second
    /// (`ops`), bytes per second, name, or dirty pages.
    #[arg(long, value_enum, default_value_t = SortKey::Ops)]
    sort: SortKey,
    /// Print one plain frame (rates over one --interval) and exit.
    #[arg(long, conflicts_with = "iterations")]
    once: bool,
}

/// How the regions are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Busiest first: pages read and written per second.
    Ops,
    /// Most bytes read and written per second first.
    Bytes,
    /// By name.
    Name,
    /// Most pages dirty since the last checkpoint first.
    Dirty,
}

impl SortKey {
    fn name(self) -> &'static str {
        match self {
            SortKey::Ops => "ops",
            SortKey::Bytes => "bytes",
            SortKey::Name => "name",
            SortKey::Dirty => "dirty",
        }
    }
}

/// Parses an interval: a number with `ms`, `s`, `m` or `h`, or a plain
/// number of seconds, between 50 ms and an hour.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not an interval (e.g. 1s, 200ms, 1.5s, 2m)"))?;
    let unit_ms = match unit.trim() {
        "ms" => 1.0,
        "" | "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use ms, s, m or h, e.g. 1s, 200ms)"
            ));
        }
    };
    let milliseconds = value * unit_ms;
    if !(INTERVAL_MS_MIN as f64..=INTERVAL_MS_MAX as f64).contains(&milliseconds) {
        return Err(format!(
            "{text:?}: the interval must be between {INTERVAL_MS_MIN}ms and 1h"
        ));
    }
    Ok(Duration::from_secs_f64(milliseconds / 1_000.0))
}

pub fn run(args: TopArgs) -> Result<(), String> {
    let mut watcher = Watcher::connect(&args.node)?;
    let interactive = !args.once && std::io::stdout().is_terminal();
    let iterations = if args.once { Some(1) } else { args.iterations };
    if interactive {
        run_terminal(watcher, &args, iterations)
    } else {
        run_plain(&mut watcher, &args, iterations)
    }
}

/// Prints a plain frame every interval, `iterations` times (or until the
/// output is closed).
fn run_plain(watcher: &mut Watcher, args: &TopArgs, iterations: Option<u64>) -> Result<(), String> {
    let start = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let mut last = None;
    for index in 1.. {
        sleep_until(start + args.interval * index);
        let frame = watcher.poll();
        let mut text = render(&frame, args.sort, None).join("\n");
        text.push_str("\n\n");
        // A reader that went away (`pagoda top | head`) ends the run.
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(error) => return Err(format!("writing the frame: {error}")),
        }
        last = Some(frame);
        if iterations.is_some_and(|iterations| u64::from(index) >= iterations) {
            break;
        }
    }
    match last.and_then(|frame| frame.unreachable) {
        Some(error) => Err(format!(
            "node {} was still unreachable at the last frame: {error}",
            watcher.address.node
        )),
        None => Ok(()),
    }
}

/// The live view: a poller thread sends frames, this thread draws them and
/// reads keys.
fn run_terminal(watcher: Watcher, args: &TopArgs, iterations: Option<u64>) -> Result<(), String> {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

    // Raw mode turns Ctrl-C into a key; a SIGTERM or SIGHUP sets this flag
    // instead of killing the process, so the terminal is always restored.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|error| format!("handling signal {signal}: {error}"))?;
    }
    let mut frame = watcher.baseline_frame();
    let (sender, receiver) = mpsc::sync_channel(FRAMES_QUEUED_MAX);
    let interval = args.interval;
    // The poller ends when the view drops its receiver; one blocked in a
    // poll is left behind when the process exits.
    std::thread::Builder::new()
        .name("top-poller".into())
        .spawn(move || poll_forever(watcher, interval, sender))
        .map_err(|error| format!("starting the poller: {error}"))?;

    let mut sort = args.sort;
    let mut frames_shown = 0_u64;
    let mut finished = false;
    let terminal = Terminal::enter()?;
    terminal.draw(&frame, sort)?;
    while !stop.load(Ordering::Relaxed) {
        let mut redraw = false;
        if event::poll(Duration::from_millis(EVENT_WAIT_MS)).map_err(terminal_error)? {
            match event::read().map_err(terminal_error)? {
                Event::Key(key) if key.kind != KeyEventKind::Release => match key.code {
                    KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => break,
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => break,
                    KeyCode::Char('o') => (sort, redraw) = (SortKey::Ops, true),
                    KeyCode::Char('b') => (sort, redraw) = (SortKey::Bytes, true),
                    KeyCode::Char('n') => (sort, redraw) = (SortKey::Name, true),
                    KeyCode::Char('d') => (sort, redraw) = (SortKey::Dirty, true),
                    _ => {}
                },
                Event::Resize(..) => redraw = true,
                _ => {}
            }
        }
        match receiver.try_recv() {
            Ok(next) => {
                frame = next;
                frames_shown += 1;
                redraw = true;
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => break,
        }
        if redraw {
            terminal.draw(&frame, sort)?;
        }
        if iterations.is_some_and(|iterations| frames_shown >= iterations) {
            finished = true;
            break;
        }
    }
    drop(terminal);
    // A bounded run leaves its last frame on the screen it returns to.
    if finished {
        println!("{}", render(&frame, sort, None).join("\n"));
        if let Some(error) = &frame.unreachable {
            return Err(format!(
                "node {} was still unreachable at the last frame: {error}",
                frame.address
            ));
        }
    }
    Ok(())
}

/// Polls every `interval` and sends each frame, until the receiver is gone.
fn poll_forever(mut watcher: Watcher, interval: Duration, sender: mpsc::SyncSender<Frame>) {
    let start = Instant::now();
    for index in 1_u32.. {
        sleep_until(start + interval * index);
        if sender.send(watcher.poll()).is_err() {
            return;
        }
    }
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

fn terminal_error(error: std::io::Error) -> String {
    format!("terminal: {error}")
}

/// The terminal in raw mode on the alternate screen, with the cursor
/// hidden; dropping it puts everything back, on every way out (an error, a
/// panic's unwinding).
struct Terminal;

impl Terminal {
    fn enter() -> Result<Terminal, String> {
        crossterm::terminal::enable_raw_mode().map_err(terminal_error)?;
        // From here on, dropping the guard restores the terminal.
        let terminal = Terminal;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )
        .map_err(terminal_error)?;
        Ok(terminal)
    }

    /// Draws `frame` over the whole screen, cut to its width and height,
    /// with the keys on the last line.
    fn draw(&self, frame: &Frame, sort: SortKey) -> Result<(), String> {
        use crossterm::{cursor::MoveTo, style::Print, terminal::Clear, terminal::ClearType};
        let (width, height) = crossterm::terminal::size().map_err(terminal_error)?;
        let (width, height) = (usize::from(width), usize::from(height));
        if height == 0 || width == 0 {
            return Ok(());
        }
        let mut lines = render(frame, sort, Some(width));
        lines.truncate(height - 1);
        lines.resize(height - 1, String::new());
        lines.push(format!(
            "q quit   sort: o ops, b bytes, n name, d dirty (now {})",
            sort.name()
        ));
        let mut stdout = std::io::stdout().lock();
        for (row, line) in lines.iter().enumerate() {
            let line: String = line.chars().take(width).collect();
            crossterm::queue!(
                stdout,
                MoveTo(0, row as u16),
                Print(line),
                Clear(ClearType::UntilNewLine)
            )
            .map_err(terminal_error)?;
        }
        stdout.flush().map_err(terminal_error)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = crossterm::execute!(
            std::io::stdout(),
            crossterm::cursor::Show,
            crossterm::terminal::LeaveAlternateScreen
        );
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// One poll of the node: its statistics and its regions'.
struct Sample {
    /// When the node's statistics came back.
    at: Instant,
    node: NodeStat,
    regions: Vec<RegionSample>,
    /// Regions the node listed (some may not have been polled).
    regions_listed: usize,
    /// Requests this poll sent after `NodeStat`, which the next poll's
    /// request count includes.
    requests_after_node_stat: u64,
}

struct RegionSample {
    stat: RegionStat,
    /// This node's replication role for the region, with its replicas in
    /// sync and in all; `None` when the node would not say.
    role: Option<Role>,
}

#[derive(Clone, Copy)]
struct Role {
    role: ReplicaRole,
    in_sync: bool,
    replicas_in_sync: usize,
    replicas: usize,
}

/// Polls one node, dialling it again after it went away.
struct Watcher {
    address: crate::NodeAddress,
    client: Option<Client>,
    previous: Option<Sample>,
}

impl Watcher {
    /// Connects and takes the baseline poll; any failure is the command's
    /// error.
    fn connect(address: &crate::NodeAddress) -> Result<Watcher, String> {
        let client = dial(address).map_err(|error| describe(address, error))?;
        let sample = take_sample(&client).map_err(|error| describe(address, error))?;
        Ok(Watcher {
            address: address.clone(),
            client: Some(client),
            previous: Some(sample),
        })
    }

    /// The baseline as a frame, without rates: what the terminal view
    /// shows until the first interval has passed.
    fn baseline_frame(&self) -> Frame {
        let sample = self.previous.as_ref().expect("connect takes a baseline");
        frame_of(&self.address.node, None, sample)
    }

    /// Polls once: a frame with rates against the previous poll, or one
    /// saying the node is unreachable.
    fn poll(&mut self) -> Frame {
        let client = match self.client.take() {
            Some(client) => client,
            None => match dial(&self.address) {
                Ok(client) => client,
                Err(error) => return self.unreachable(error),
            },
        };
        match take_sample(&client) {
            Ok(sample) => {
                let frame = frame_of(&self.address.node, self.previous.as_ref(), &sample);
                self.previous = Some(sample);
                self.client = Some(client);
                frame
            }
            Err(error) => self.unreachable(error),
        }
    }

    /// The node went away: rates start again from the next poll that
    /// reaches it (its counters may have restarted with it).
    fn unreachable(&mut self, error: ClientError) -> Frame {
        self.previous = None;
        Frame {
            address: self.address.node.clone(),
            unreachable: Some(crate::client_error(error)),
            node: None,
        }
    }
}

/// Connects without the client's own redialling: the watcher dials again
/// each interval itself, so that it can show that the node is away.
fn dial(address: &crate::NodeAddress) -> Result<Client, ClientError> {
    let options = pagoda::ClientOptions {
        timeout: Duration::from_millis(REPLY_TIMEOUT_MS),
        reconnect_for: Duration::ZERO,
        credential: address.credential.clone(),
        tls: address
            .tls
            .options(&address.node)
            .map_err(ClientError::Protocol)?,
        token: match &address.token_file {
            Some(path) => Some(crate::read_token(path).map_err(ClientError::Protocol)?),
            None => None,
        },
        ..pagoda::ClientOptions::default()
    };
    crate::check_address("--node", &address.node).map_err(ClientError::Protocol)?;
    Client::connect(address.node.as_str(), options)
}

/// Words an error at the start, naming the node once: a failure to connect
/// names it already, a refusal is the node's own message.
fn describe(address: &crate::NodeAddress, error: ClientError) -> String {
    match error {
        // Our own checks (the address, the token file, TLS options).
        ClientError::Protocol(message) => message,
        error @ (ClientError::Remote { .. } | ClientError::Connect { .. }) => {
            crate::client_error(error)
        }
        error => format!("node {}: {}", address.node, crate::client_error(error)),
    }
}

/// Polls the node once.
fn take_sample(client: &Client) -> Result<Sample, ClientError> {
    let node = client.node_stat()?;
    let at = Instant::now();
    let listed = client.list_regions()?;
    let mut requests_after_node_stat = 1;
    let mut regions = Vec::with_capacity(listed.len().min(REGIONS_POLLED_MAX));
    for info in listed.iter().take(REGIONS_POLLED_MAX) {
        requests_after_node_stat += 2;
        let stat = match client.stat_region(&info.name) {
            Ok(stat) => stat,
            // Deleted since the listing.
            Err(error) if error.code() == Some(ErrorCode::RegionNotFound) => continue,
            Err(error) => return Err(error),
        };
        let role = match client.replicas(&info.name) {
            Ok(set) => Some(Role {
                role: set.role,
                in_sync: set.in_sync,
                replicas_in_sync: set.replicas.iter().filter(|r| r.in_sync).count(),
                replicas: set.replicas.len(),
            }),
            // A refusal (the region went, the credential may not ask) only
            // leaves the role out.
            Err(ClientError::Remote { .. }) => None,
            Err(error) => return Err(error),
        };
        regions.push(RegionSample { stat, role });
    }
    Ok(Sample {
        at,
        node,
        regions,
        regions_listed: listed.len(),
        requests_after_node_stat,
    })
}

/// What one frame shows.
struct Frame {
    address: String,
    /// Why the node could not be polled, if it could not.
    unreachable: Option<String>,
    node: Option<NodeView>,
}

struct NodeView {
    stat: NodeStat,
    /// Seconds between the two polls the rates come from (`None`: no rates
    /// yet).
    over_s: Option<f64>,
    requests_per_s: Option<f64>,
    /// Page bytes written to the node per second.
    in_bytes_per_s: Option<f64>,
    /// Page bytes read from the node per second.
    out_bytes_per_s: Option<f64>,
    rows: Vec<Row>,
    regions_listed: usize,
}

struct Row {
    name: String,
    size: u64,
    resident_bytes: u64,
    segments: u64,
    dirty_pages: u64,
    role: String,
    pages_per_s: Option<f64>,
    bytes_per_s: Option<f64>,
    checkpoint: String,
}

/// The frame for `sample`, with rates against `previous` where its
/// counters are comparable (they only grow while the node runs).
fn frame_of(address: &str, previous: Option<&Sample>, sample: &Sample) -> Frame {
    let elapsed_s = previous
        .map(|previous| sample.at.duration_since(previous.at).as_secs_f64())
        .filter(|seconds| *seconds > 0.0);
    let requests_per_s = previous.zip(elapsed_s).and_then(|(previous, seconds)| {
        let served = sample.node.requests.checked_sub(previous.node.requests)?;
        // This poll's own `NodeStat` is counted before the node answers it.
        let own = previous.requests_after_node_stat + 1;
        Some(served.saturating_sub(own) as f64 / seconds)
    });
    let mut in_bytes = Some(0_u64);
    let mut out_bytes = Some(0_u64);
    let rows = sample
        .regions
        .iter()
        .map(|region| {
            let stat = &region.stat;
            let page_bytes = u64::from(stat.info.page_size);
            // The same region (not one recreated under its name) in both
            // polls, its counters not gone back.
            let delta = previous
                .and_then(|previous| {
                    previous
                        .regions
                        .iter()
                        .find(|old| old.stat.uid == stat.uid && old.stat.info.id == stat.info.id)
                })
                .and_then(|old| {
                    Some((
                        stat.pages_read.checked_sub(old.stat.pages_read)?,
                        stat.pages_written.checked_sub(old.stat.pages_written)?,
                    ))
                });
            match delta {
                Some((read, written)) => {
                    in_bytes = in_bytes.map(|sum| sum.saturating_add(written * page_bytes));
                    out_bytes = out_bytes.map(|sum| sum.saturating_add(read * page_bytes));
                }
                // A region new since the last poll adds nothing to the
                // node's rates; without a last poll there are none.
                None if previous.is_none() => (in_bytes, out_bytes) = (None, None),
                None => {}
            }
            let per_s = |count: u64| elapsed_s.map(|seconds| count as f64 / seconds);
            Row {
                name: stat.info.name.clone(),
                size: stat.info.size,
                resident_bytes: stat.resident_bytes,
                segments: stat.segments_allocated,
                dirty_pages: stat.dirty_pages,
                role: describe_role(stat.state, region.role),
                pages_per_s: delta.and_then(|(read, written)| per_s(read + written)),
                bytes_per_s: delta.and_then(|(read, written)| per_s((read + written) * page_bytes)),
                checkpoint: describe_checkpoint(stat.checkpoint, stat.checkpoint_age_ms),
            }
        })
        .collect();
    let per_s = |bytes: Option<u64>| {
        bytes
            .zip(elapsed_s)
            .map(|(bytes, seconds)| bytes as f64 / seconds)
    };
    Frame {
        address: address.to_owned(),
        unreachable: None,
        node: Some(NodeView {
            stat: sample.node.clone(),
            over_s: elapsed_s,
            requests_per_s,
            in_bytes_per_s: per_s(in_bytes),
            out_bytes_per_s: per_s(out_bytes),
            rows,
            regions_listed: sample.regions_listed,
        }),
    }
}

fn describe_role(state: RegionState, role: Option<Role>) -> String {
    let mut text = match role {
        None => "-".to_owned(),
        Some(role) => match role.role {
            ReplicaRole::Solo => "solo".to_owned(),
            ReplicaRole::Primary => {
                format!(
                    "primary {}/{} in sync",
                    role.replicas_in_sync, role.replicas
                )
            }
            ReplicaRole::Replica if role.in_sync => "replica".to_owned(),
            ReplicaRole::Replica => "replica, behind".to_owned(),
            ReplicaRole::Fenced => "fenced".to_owned(),
        },
    };
    if state != RegionState::Active {
        text.push_str(", ");
        text.push_str(state.name());
    }
    text
}

fn describe_checkpoint(number: u64, age_ms: u64) -> String {
    if number == 0 || age_ms == u64::MAX {
        return "none".to_owned();
    }
    format!("#{number} {} ago", format_age(age_ms))
}

/// An age in its two largest units: `850ms`, `42s`, `3m07s`, `2h05m`,
/// `4d03h`.
fn format_age(milliseconds: u64) -> String {
    let seconds = milliseconds / 1_000;
    match seconds {
        0 => format!("{milliseconds}ms"),
        1..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3_600..86_400 => format!("{}h{:02}m", seconds / 3_600, seconds / 60 % 60),
        _ => format!("{}d{:02}h", seconds / 86_400, seconds / 3_600 % 24),
    }
}

/// A count per second, for people: `0`, `0.4`, `87`, `1.2k`, `3.4M`.
fn format_rate(value: f64) -> String {
    if value == 0.0 {
        "0".to_owned()
    } else if value < 10.0 {
        format!("{value:.1}")
    } else if value < 1_000.0 {
        format!("{value:.0}")
    } else if value < 1_000_000.0 {
        format!("{:.1}k", value / 1_000.0)
    } else {
        format!("{:.1}M", value / 1_000_000.0)
    }
}

fn format_bytes_per_s(value: f64) -> String {
    format!("{}/s", format_bytes(value.round() as u64))
}

fn or_dash(value: Option<f64>, format: fn(f64) -> String) -> String {
    value.map_or_else(|| "-".to_owned(), format)
}

/// The frame's lines. `width` (a terminal's) sizes the RAM bar; lines are
/// not cut here.
fn render(frame: &Frame, sort: SortKey, width: Option<usize>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut title = format!("node {}", frame.address);
    match (&frame.unreachable, &frame.node) {
        (Some(error), _) => title.push_str(&format!("  node unreachable, retrying ({error})")),
        (None, Some(view)) => match view.over_s {
            Some(seconds) => title.push_str(&format!(
                "  rates over {seconds:.1} s  sorted by {}",
                sort.name()
            )),
            None => title.push_str("  (rates after the first interval)"),
        },
        (None, None) => {}
    }
    lines.push(title);
    let Some(view) = &frame.node else {
        return lines;
    };
    let stat = &view.stat;
    let fraction = if stat.capacity_bytes == 0 {
        0.0
    } else {
        stat.used_bytes as f64 / stat.capacity_bytes as f64
    };
    let cells = width.map_or(RAM_BAR_CELLS, |width| {
        width.saturating_sub(50).clamp(10, RAM_BAR_CELLS)
    });
    let filled = ((fraction * cells as f64).round() as usize).min(cells);
    lines.push(format!(
        "ram  [{}{}]  {} of {} ({:.1} %), {} segments",
        "#".repeat(filled),
        ".".repeat(cells - filled),
        format_bytes(stat.used_bytes),
        format_bytes(stat.capacity_bytes),
        fraction * 100.0,
        format_bytes(stat.segment_bytes),
    ));
    lines.push(format!(
        "regions {}  connections {}  requests {}/s  in {}  out {}",
        stat.regions,
        stat.connections,
        or_dash(view.requests_per_s, format_rate),
        or_dash(view.in_bytes_per_s, format_bytes_per_s),
        or_dash(view.out_bytes_per_s, format_bytes_per_s),
    ));
    lines.push(String::new());

    let mut rows: Vec<&Row> = view.rows.iter().collect();
    let rate = |value: Option<f64>| value.unwrap_or(-1.0);
    match sort {
        SortKey::Ops => rows.sort_by(|a, b| {
            rate(b.pages_per_s)
                .total_cmp(&rate(a.pages_per_s))
                .then_with(|| a.name.cmp(&b.name))
        }),
        SortKey::Bytes => rows.sort_by(|a, b| {
            rate(b.bytes_per_s)
                .total_cmp(&rate(a.bytes_per_s))
                .then_with(|| a.name.cmp(&b.name))
        }),
        SortKey::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
        SortKey::Dirty => rows.sort_by(|a, b| {
            b.dirty_pages
                .cmp(&a.dirty_pages)
                .then_with(|| a.name.cmp(&b.name))
        }),
    }
    let header = [
        "REGION",
        "SIZE",
        "RESIDENT",
        "SEGMENTS",
        "DIRTY",
        "ROLE",
        "PAGES/S",
        "BYTES/S",
        "CHECKPOINT",
    ];
    let mut table = vec![header.map(str::to_owned)];
    for row in rows {
        table.push([
            row.name.clone(),
            format_bytes(row.size),
            format_bytes(row.resident_bytes),
            row.segments.to_string(),
            row.dirty_pages.to_string(),
            row.role.clone(),
            or_dash(row.pages_per_s, format_rate),
            or_dash(row.bytes_per_s, format_bytes_per_s),
            row.checkpoint.clone(),
        ]);
    }
    // Names, roles and checkpoints read left to right; figures line up on
    // the right.
    let left = |column: usize| matches!(column, 0 | 5 | 8);
    let mut widths = [0; 9];
    for cells in &table {
        for (column, cell) in cells.iter().enumerate() {
            widths[column] = widths[column].max(cell.chars().count());
        }
    }
    for cells in &table {
        let mut line = String::new();
        for (column, cell) in cells.iter().enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            let pad = widths[column] - cell.chars().count();
            if left(column) {
                line.push_str(cell);
                if column + 1 < cells.len() {
                    line.push_str(&" ".repeat(pad));
                }
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        lines.push(line);
    }
    if view.regions_listed > view.rows.len() && view.regions_listed > REGIONS_POLLED_MAX {
        lines.push(format!(
            "... and {} more regions, not polled",
            view.regions_listed - view.rows.len()
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the interval flag: the units it takes, a plain number as
    // seconds, and the bounds.
    #[test]
    fn intervals_parse_with_units_and_bounds() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_interval("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_interval("3"), Ok(Duration::from_secs(3)));
        assert!(
            parse_interval("10ms")
                .unwrap_err()
                .contains("between 50ms and 1h")
        );
        assert!(
            parse_interval("2h")
                .unwrap_err()
                .contains("between 50ms and 1h")
        );
        assert!(parse_interval("1x").unwrap_err().contains("unknown unit"));
        assert!(
            parse_interval("fast")
                .unwrap_err()
                .contains("not an interval")
        );
    }

    // Guards the short forms people read at a glance.
    #[test]
    fn ages_and_rates_read_at_a_glance() {
        assert_eq!(format_age(850), "850ms");
        assert_eq!(format_age(42_000), "42s");
        assert_eq!(format_age(187_000), "3m07s");
        assert_eq!(format_age(7_500_000), "2h05m");
        assert_eq!(format_age(4 * 86_400_000 + 3 * 3_600_000), "4d03h");
        assert_eq!(format_rate(0.0), "0");
        assert_eq!(format_rate(0.44), "0.4");
        assert_eq!(format_rate(87.2), "87");
        assert_eq!(format_rate(1_234.0), "1.2k");
        assert_eq!(format_rate(3_400_000.0), "3.4M");
        assert_eq!(describe_checkpoint(0, u64::MAX), "none");
        assert_eq!(describe_checkpoint(3, 42_000), "#3 42s ago");
    }

    fn region(name: &str, uid: u64, read: u64, written: u64, dirty: u64) -> RegionSample {
        RegionSample {
            stat: RegionStat {
                info: pagoda::RegionInfo {
                    id: uid,
                    size: 1 << 20,
                    page_size: 4096,
                    name: name.to_owned(),
                },
                segments_allocated: 1,
                resident_bytes: 2 << 20,
                pages_read: read,
                pages_written: written,
                state: RegionState::Active,
                checkpoint: 0,
                checkpoint_age_ms: u64::MAX,
                dirty_pages: dirty,
                uid,
                metadata_bytes: 0,
                segments_paged_out: 0,
                bulk_bytes: 0,
                bulk_zero_bytes: 0,
                segments_loading: 0,
                state_reason: String::new(),
            },
            role: Some(Role {
                role: ReplicaRole::Solo,
                in_sync: true,
                replicas_in_sync: 0,
                replicas: 0,
            }),
        }
    }

    fn sample(at: Instant, requests: u64, regions: Vec<RegionSample>) -> Sample {
        Sample {
            at,
            node: NodeStat {
                capacity_bytes: 64 << 20,
                used_bytes: 16 << 20,
                segment_bytes: 2 << 20,
                regions: regions.len() as u32,
                connections: 1,
                requests,
                bulk_capacity_bytes: 0,
                bulk_used_bytes: 0,
                bulk_referenced_bytes: 0,
                bulk_zero_bytes: 0,
                segments_paged_out: 0,
                segments_paged_in: 0,
            },
            regions_listed: regions.len(),
            requests_after_node_stat: 1 + 2 * regions.len() as u64,
            regions,
        }
    }

    // Guards the arithmetic of rates: deltas over the time between polls,
    // the command's own requests left out, bytes in from pages written and
    // out from pages read, and no rate for a region recreated under its
    // name or for counters that went back (a restarted node).
    #[test]
    fn rates_come_from_counter_deltas() {
        let start = Instant::now();
        let first = sample(
            start,
            100,
            vec![region("a", 1, 10, 10, 0), region("b", 2, 0, 0, 0)],
        );
        let second = sample(
            start + Duration::from_secs(2),
            // 5 own requests (list, 2 × stat and replicas after the first
            // node stat) and this node stat: 6 of these 206 are ours.
            306,
            vec![region("a", 1, 30, 50, 7), region("b", 9, 0, 0, 0)],
        );
        let frame = frame_of("n:1", Some(&first), &second);
        let view = frame.node.unwrap();
        assert_eq!(view.requests_per_s, Some(100.0));
        assert_eq!(view.in_bytes_per_s, Some(20.0 * 4096.0));
        assert_eq!(view.out_bytes_per_s, Some(10.0 * 4096.0));
        assert_eq!(view.rows[0].pages_per_s, Some(30.0));
        assert_eq!(view.rows[0].bytes_per_s, Some(30.0 * 4096.0));
        assert_eq!(view.rows[1].pages_per_s, None, "b was recreated");

        let restarted = sample(
            start + Duration::from_secs(3),
            5,
            vec![region("a", 1, 0, 0, 0)],
        );
        let view = frame_of("n:1", Some(&second), &restarted).node.unwrap();
        assert_eq!(view.requests_per_s, None);
        assert_eq!(view.rows[0].pages_per_s, None);

        let lines = render(&frame_of("n:1", None, &first), SortKey::Name, None);
        assert!(
            lines[0].contains("rates after the first interval"),
            "{lines:?}"
        );
        assert!(lines[2].contains("requests -/s  in -  out -"), "{lines:?}");
    }

    // Guards each sort order and the unreachable header.
    #[test]
    fn rows_sort_by_the_chosen_key() {
        let start = Instant::now();
        let first = sample(
            start,
            0,
            vec![
                region("a", 1, 0, 0, 5),
                region("b", 2, 0, 0, 1),
                region("c", 3, 0, 0, 9),
            ],
        );
        let second = sample(
            start + Duration::from_secs(1),
            100,
            vec![
                region("a", 1, 0, 1, 5),
                region("b", 2, 50, 0, 1),
                region("c", 3, 7, 0, 9),
            ],
        );
        let frame = frame_of("n:1", Some(&first), &second);
        let order = |sort: SortKey| -> Vec<String> {
            render(&frame, sort, None)
                .iter()
                .skip(5)
                .map(|line| line.split_whitespace().next().unwrap().to_owned())
                .collect()
        };
        assert_eq!(order(SortKey::Ops), ["b", "c", "a"]);
        assert_eq!(order(SortKey::Bytes), ["b", "c", "a"]);
        assert_eq!(order(SortKey::Name), ["a", "b", "c"]);
        assert_eq!(order(SortKey::Dirty), ["c", "a", "b"]);

        let away = Frame {
            address: "n:1".into(),
            unreachable: Some("connection refused".into()),
            node: None,
        };
        assert_eq!(
            render(&away, SortKey::Ops, None),
            ["node n:1  node unreachable, retrying (connection refused)"]
        );
    }
}
