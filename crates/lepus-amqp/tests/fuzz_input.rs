//! Arbitrary and mutated bytes through the frame reader and the delivery assembler: no
//! input may panic or hang. Runs in CI in a few seconds; `PROPTEST_CASES` raises the count.

use lepus_amqp::fuzzing::{fuzz_decode, seed_frames};
use proptest::prelude::*;

#[test]
fn the_seed_stream_is_fully_valid() {
    // Every frame of the seed applies cleanly, so mutations start from deep inside the
    // state machine rather than from the first parse error.
    let seed = seed_frames();
    assert_eq!(fuzz_decode(&seed), 18);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        fuzz_decode(&data);
    }

    #[test]
    fn mutated_valid_streams_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        splice in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut data = seed_frames();
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        let at = cut.index(data.len());
        data.splice(at..at, splice);
        fuzz_decode(&data);
    }

    #[test]
    fn every_prefix_of_a_valid_stream_is_handled(cut in any::<prop::sample::Index>()) {
        let data = seed_frames();
        let end = cut.index(data.len());
        prop_assert!(fuzz_decode(&data[..end]) <= 18);
    }
}
