//! CLOCK, the interim policy: a reference bit per frame and a hand that sweeps
//! the frames, clearing set bits and evicting the first frame whose bit is clear.

use std::sync::atomic::{AtomicU8, Ordering};

use parking_lot::Mutex;

use super::{AccessBits, EvictionPolicy, FrameId};

const STATE_ABSENT: u8 = 0;
const STATE_RESIDENT: u8 = 1;

/// CLOCK (second chance). Hits set a bit without taking a lock; victim
/// selection takes the hand's lock.
pub struct Clock {
    referenced: AccessBits,
    state: Box<[AtomicU8]>,
    hand: Mutex<usize>,
}

impl Clock {
    /// Builds a CLOCK over `frames` frames, all absent.
    pub fn new(frames: usize) -> Clock {
        Clock::with_bits(AccessBits::own(frames))
    }

    /// Builds a CLOCK over as many frames as `referenced` has bits.
    pub(crate) fn with_bits(referenced: AccessBits) -> Clock {
        let frames = referenced.len();
        assert!(frames > 0, "a cache needs at least one frame");
        assert!(frames <= u32::MAX as usize, "frame ids are 32-bit");
        Clock {
            referenced,
            state: (0..frames).map(|_| AtomicU8::new(STATE_ABSENT)).collect(),
            hand: Mutex::new(0),
        }
    }
}

impl EvictionPolicy for Clock {
    fn admit(&self, frame: FrameId, _key: u64) {
        let index = frame as usize;
        self.referenced.clear(frame);
        self.state[index].store(STATE_RESIDENT, Ordering::Release);
    }

    #[inline]
    fn touch(&self, frame: FrameId) {
        self.referenced.set(frame);
    }

    fn victim(&self, claim: &mut dyn FnMut(FrameId) -> bool) -> Option<FrameId> {
        let frames = self.state.len();
        let mut hand = self.hand.lock();
        // Two full sweeps clear every reference bit once, so a third sweep's
        // worth of steps is enough to find any claimable frame.
        for _ in 0..frames * 3 {
            let index = *hand;
            *hand = (index + 1) % frames;
            if self.state[index].load(Ordering::Acquire) != STATE_RESIDENT {
                continue;
            }
            if self.referenced.get(index as FrameId) {
                self.referenced.clear(index as FrameId);
                continue;
            }
            if claim(index as FrameId) {
                self.state[index].store(STATE_ABSENT, Ordering::Release);
                return Some(index as FrameId);
            }
        }
        None
    }

    fn remove(&self, frame: FrameId) {
        self.state[frame as usize].store(STATE_ABSENT, Ordering::Release);
    }

    fn name(&self) -> &'static str {
        "clock"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the second-chance rule: a referenced frame survives one sweep.
    #[test]
    fn referenced_frame_gets_second_chance() {
        let clock = Clock::new(3);
        for frame in 0..3 {
            clock.admit(frame, frame as u64);
        }
        clock.touch(0);
        assert_eq!(clock.victim(&mut |_| true), Some(1));
        assert_eq!(clock.victim(&mut |_| true), Some(2));
        // Frame 0's bit was cleared by the first sweep; now it goes.
        assert_eq!(clock.victim(&mut |_| true), Some(0));
        assert_eq!(clock.victim(&mut |_| true), None);
    }

    // Guards that pinned (unclaimable) frames are skipped and stay resident.
    #[test]
    fn unclaimable_frames_are_skipped() {
        let clock = Clock::new(2);
        clock.admit(0, 10);
        clock.admit(1, 11);
        assert_eq!(clock.victim(&mut |frame| frame == 1), Some(1));
        assert_eq!(clock.victim(&mut |_| false), None);
        assert_eq!(clock.victim(&mut |_| true), Some(0));
    }
}
