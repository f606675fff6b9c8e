//! Fuzzes the virtio-vsock header parser, which sees every header the guest puts on the tx queue.
#![no_main]

use ember::vmm::devices::virtio::vsock::packet::{parse_header, Header, HDR_LEN, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hdr) = parse_header(data) {
        // What was accepted passed the checks...
        assert!(hdr.len <= MAX_PAYLOAD);
        // ...and survives an encode/decode round trip, byte for byte.
        let bytes = hdr.to_bytes();
        assert_eq!(Header::from_bytes(&bytes), hdr);
        assert_eq!(&bytes[..], &data[..HDR_LEN]);
    } else if let Some(raw) = data.get(..HDR_LEN) {
        // Refused headers still decode and re-encode losslessly.
        let raw: &[u8; HDR_LEN] = raw.try_into().unwrap();
        assert_eq!(&Header::from_bytes(raw).to_bytes(), raw);
    }
});
