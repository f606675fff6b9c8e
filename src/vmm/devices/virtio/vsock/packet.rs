//! The virtio-vsock packet header (virtio 1.x, section 5.10.6) and its parser.
//!
//! Every header on the tx queue is written by the guest. [`parse_header`] is a pure function (no
//! I/O, no allocation) so a fuzz target can call it on its own; it checks what a header alone can
//! tell. The device checks the rest: the source CID against the guest's, the length against the
//! descriptors that carry the payload.

/// Length of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The host's CID: the only destination a guest may address.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type offered.
pub const TYPE_STREAM: u16 = 1;
/// The largest payload accepted from the guest or sent to it in one packet.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection refused or aborted.
pub const OP_RST: u16 = 3;
/// One side stops receiving and/or sending (see the `SHUTDOWN_*` flags).
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// The sender's receive buffer and how much of it was consumed.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// A request for an `OP_CREDIT_UPDATE`.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `OP_SHUTDOWN` flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `OP_SHUTDOWN` flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded `struct virtio_vsock_hdr` (all fields little endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Socket type (`TYPE_STREAM`).
    pub kind: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Operation flags (`SHUTDOWN_*` for `OP_SHUTDOWN`).
    pub flags: u32,
    /// The sender's receive buffer for this connection.
    pub buf_alloc: u32,
    /// How many bytes the sender has consumed from that buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

/// Why a guest header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer than [`HDR_LEN`] bytes.
    #[error("header of {0} bytes is short")]
    Short(usize),
    /// Not a stream socket.
    #[error("socket type {0} is not supported")]
    Type(u16),
    /// An operation the protocol does not define.
    #[error("unknown operation {0}")]
    Op(u16),
    /// Addressed to someone other than the host.
    #[error("destination CID {0} is not the host")]
    DstCid(u64),
    /// A payload longer than [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is too long")]
    TooLong(u32),
}

/// Copies `N` bytes of `b` at `at`.
fn field<const N: usize>(b: &[u8; HDR_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

impl Header {
    /// A stream packet from `src` to `dst` (each a cid and port) with op `op`; its length,
    /// flags and credit fields are zero.
    pub fn stream(src: (u64, u32), dst: (u64, u32), op: u16) -> Header {
        Header {
            src_cid: src.0,
            src_port: src.1,
            dst_cid: dst.0,
            dst_port: dst.1,
            kind: TYPE_STREAM,
            op,
            ..Header::default()
        }
    }

    /// Decodes a header without checking it (for headers the device wrote itself).
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: u64::from_le_bytes(field(b, 0)),
            dst_cid: u64::from_le_bytes(field(b, 8)),
            src_port: u32::from_le_bytes(field(b, 16)),
            dst_port: u32::from_le_bytes(field(b, 20)),
            len: u32::from_le_bytes(field(b, 24)),
            kind: u16::from_le_bytes(field(b, 28)),
            op: u16::from_le_bytes(field(b, 30)),
            flags: u32::from_le_bytes(field(b, 32)),
            buf_alloc: u32::from_le_bytes(field(b, 36)),
            fwd_cnt: u32::from_le_bytes(field(b, 40)),
        }
    }

    /// Encodes the header as it goes on the wire.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Parses the header at the start of `bytes`, a packet from the guest to the host, and checks
/// its type, operation, destination and length. Bytes past the header are ignored.
pub fn parse_header(bytes: &[u8]) -> Result<Header, PacketError> {
    let raw: &[u8; HDR_LEN] =
        bytes.get(..HDR_LEN).and_then(|b| b.try_into().ok()).ok_or(PacketError::Short(bytes.len()))?;
    let hdr = Header::from_bytes(raw);
    if hdr.kind != TYPE_STREAM {
        return Err(PacketError::Type(hdr.kind));
    }
    if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&hdr.op) {
        return Err(PacketError::Op(hdr.op));
    }
    if hdr.dst_cid != HOST_CID {
        return Err(PacketError::DstCid(hdr.dst_cid));
    }
    if hdr.len > MAX_PAYLOAD {
        return Err(PacketError::TooLong(hdr.len));
    }
    Ok(hdr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Header {
        Header { len: 5, buf_alloc: 256 * 1024, fwd_cnt: 77, ..Header::stream((3, 1234), (HOST_CID, 5000), OP_RW) }
    }

    #[test]
    fn parses_a_good_header() {
        let hdr = good();
        let mut bytes = hdr.to_bytes().to_vec();
        assert_eq!(&bytes[16..20], &1234u32.to_le_bytes());
        assert_eq!(&bytes[30..32], &OP_RW.to_le_bytes());
        assert_eq!(parse_header(&bytes), Ok(hdr));
        // The payload may follow the header in the same buffer.
        bytes.extend_from_slice(b"hello");
        assert_eq!(parse_header(&bytes), Ok(hdr));
    }

    #[test]
    fn refuses_bad_headers() {
        let bytes = good().to_bytes();
        assert_eq!(parse_header(&bytes[..HDR_LEN - 1]), Err(PacketError::Short(HDR_LEN - 1)));
        assert_eq!(parse_header(&[]), Err(PacketError::Short(0)));
        let with = |f: fn(&mut Header)| {
            let mut h = good();
            f(&mut h);
            parse_header(&h.to_bytes())
        };
        assert_eq!(with(|h| h.kind = 2), Err(PacketError::Type(2)));
        assert_eq!(with(|h| h.op = 0), Err(PacketError::Op(0)));
        assert_eq!(with(|h| h.op = 8), Err(PacketError::Op(8)));
        assert_eq!(with(|h| h.dst_cid = 3), Err(PacketError::DstCid(3)));
        assert_eq!(with(|h| h.len = MAX_PAYLOAD + 1), Err(PacketError::TooLong(MAX_PAYLOAD + 1)));
        assert_eq!(with(|h| h.len = u32::MAX), Err(PacketError::TooLong(u32::MAX)));
        assert!(with(|h| h.len = MAX_PAYLOAD).is_ok());
    }
}
