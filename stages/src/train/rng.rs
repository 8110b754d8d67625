//! Seeds derived from a run's seed and a position (step, micro-batch), so that every random
//! choice of a training run can be recomputed from where it happens: resuming from a
//! checkpoint then needs no saved RNG state, and a resumed run draws exactly what an
//! uninterrupted one would have drawn.

/// What a derived seed is for; each purpose gets an independent stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The shuffle of one epoch's rows and batches (position: the epoch).
    DataOrder = 1,
    /// LoRA dropout masks of one micro-batch (position: step, micro-batch).
    Dropout = 2,
    /// NEFTune embedding noise of one micro-batch (position: step, micro-batch).
    Neftune = 3,
    /// The initialisation of the LoRA A matrices.
    LoraInit = 4,
}

/// The seed of `stream` at position (`a`, `b`) of a run seeded with `seed`.
pub fn derive(seed: u64, stream: Stream, a: u64, b: u64) -> u64 {
    let mut z = splitmix(seed ^ (stream as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    z = splitmix(z ^ a);
    splitmix(z ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// splitmix64's finaliser: a bijective mix with good avalanche.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_positions_differ_and_repeat() {
        let s = derive(42, Stream::Dropout, 3, 1);
        assert_eq!(s, derive(42, Stream::Dropout, 3, 1));
        assert_ne!(s, derive(42, Stream::Neftune, 3, 1));
        assert_ne!(s, derive(42, Stream::Dropout, 1, 3));
        assert_ne!(s, derive(43, Stream::Dropout, 3, 1));
    }
}
