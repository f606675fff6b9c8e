//! The host side of the runtime channel: `ember_proto::runtime::Decoder`, which splits what
//! ember-init sends the agent over vsock into frames, fed arbitrary bytes in arbitrary chunks,
//! and every decoded frame's metadata read as each type that has some (`InitError`, `Exited`,
//! `Response` and `InvokeError`, which the agent reads, and `Config`, `Invoke` and `Restore`,
//! which ember-init reads).
//!
//! Input: byte 0 mod 8 is the number of chunk-size bytes that follow; the rest is the stream,
//! pushed in chunks of those sizes in turn (0 pushes nothing), or whole if there are none.
//!
//! It passes if nothing panics and: the chunked decoder gives the same frames and the same
//! error as one fed the stream at once; the frames decoded re-encode, one after the other, to
//! the stream's own bytes (with `encode_bare` when they have no metadata, and with `encode`
//! when their metadata is JSON without surrounding whitespace); and metadata that parses as a
//! type re-encodes with `encode` into a frame that decodes to the same kind, payload and value
//! (byte for byte the original when the metadata was already in serde_json's own form).
#![no_main]

use ember_proto::runtime::{
    encode, encode_bare, Config, Decoder, Exited, Frame, FrameError, InitError, Invoke, InvokeError, Response, Restore,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

/// Decodes all it can; the error that stopped it, if one did.
fn drain(decoder: &mut Decoder, frames: &mut Vec<Frame>) -> Result<(), FrameError> {
    while let Some(frame) = decoder.next_frame()? {
        frames.push(frame);
    }
    Ok(())
}

/// If `frame`'s metadata parses as `T`: `T` re-encodes into a frame that decodes back to it.
fn typed_round_trip<T>(frame: &Frame, original: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let Ok(meta) = frame.meta::<T>() else { return };
    let bytes = encode(frame.kind, Some(&meta), &frame.payload);
    let mut decoder = Decoder::new();
    decoder.push(&bytes);
    let again = decoder.next_frame().expect("a re-encoded frame decodes").expect("a whole frame");
    assert_eq!((again.kind, &again.payload), (frame.kind, &frame.payload));
    assert_eq!(again.meta::<T>().expect("re-encoded metadata parses"), meta);
    assert!(decoder.next_frame().expect("nothing after it").is_none());
    if serde_json::to_vec(&meta).expect("metadata serializes") == frame.meta {
        assert_eq!(bytes, original, "canonical metadata re-encodes to other bytes");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let (sizes, stream) = rest.split_at(usize::from(n % 8).min(rest.len()));

    let mut whole = Decoder::new();
    whole.push(stream);
    let mut frames = Vec::new();
    let end = drain(&mut whole, &mut frames);

    let mut chunked = Decoder::new();
    let mut chunked_frames = Vec::new();
    let mut chunked_end = Ok(());
    let mut at = 0;
    for &size in sizes.iter().cycle() {
        if at == stream.len() || chunked_end.is_err() {
            break;
        }
        let to = (at + usize::from(size)).min(stream.len());
        chunked.push(&stream[at..to]);
        at = to;
        chunked_end = drain(&mut chunked, &mut chunked_frames);
        // All sizes zero: the rest goes at once.
        if sizes.iter().all(|s| *s == 0) {
            chunked.push(&stream[at..]);
            at = stream.len();
            chunked_end = drain(&mut chunked, &mut chunked_frames);
        }
    }
    if sizes.is_empty() {
        chunked.push(stream);
        chunked_end = drain(&mut chunked, &mut chunked_frames);
    }
    assert_eq!(chunked_frames, frames, "chunking changed the frames");
    assert_eq!(chunked_end, end, "chunking changed the outcome");

    // The frames are the stream's bytes, in order.
    let mut offset = 0;
    for frame in &frames {
        let len = 9 + frame.meta.len() + frame.payload.len();
        let original = &stream[offset..offset + len];
        assert_eq!(&original[..4], &((len - 4) as u32).to_le_bytes());
        assert_eq!(original[4], frame.kind as u8);
        assert_eq!(&original[5..9], &(frame.meta.len() as u32).to_le_bytes());
        assert_eq!(&original[9..9 + frame.meta.len()], &frame.meta[..]);
        assert_eq!(&original[9 + frame.meta.len()..], &frame.payload[..]);
        if frame.meta.is_empty() {
            assert_eq!(encode_bare(frame.kind, &frame.payload), original);
        } else if let Ok(raw) = serde_json::from_slice::<&RawValue>(&frame.meta) {
            if raw.get().len() == frame.meta.len() {
                assert_eq!(encode(frame.kind, Some(&raw), &frame.payload), original);
            }
        }
        typed_round_trip::<InitError>(frame, original);
        typed_round_trip::<Exited>(frame, original);
        typed_round_trip::<Response>(frame, original);
        typed_round_trip::<InvokeError>(frame, original);
        typed_round_trip::<Config>(frame, original);
        typed_round_trip::<Invoke>(frame, original);
        typed_round_trip::<Restore>(frame, original);
        offset += len;
    }
    // Past the frames: an incomplete frame or the bytes that made the error; never a whole
    // valid frame the decoder missed.
    if end.is_ok() {
        let mut rest = Decoder::new();
        rest.push(&stream[offset..]);
        assert!(matches!(rest.next_frame(), Ok(None)), "a frame left undecoded");
    }
});
