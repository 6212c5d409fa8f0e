//! The worker connections' codec, which reads a packet over [`MAX_PACKET`]
//! through without keeping it.

use bytes::{Buf, Bytes, BytesMut};
use gearman::protocol::{GearmanCodec, Packet, PacketType, HEADER_LEN, REQ_MAGIC, RES_MAGIC};
use tokio_util::codec::{Decoder, Encoder};

/// Largest packet a connection reads whole, as the crate's codec: 64 MiB.
/// gearmand takes larger ones; a worker connection refuses such a job
/// (see `WorkerCodec`) rather than lose the connection over it.
pub const MAX_PACKET: u32 = 64 * 1024 * 1024;

/// Most bytes kept of a packet over [`MAX_PACKET`]: enough for its
/// leading fields (handle, function, unique id; gearmand takes function
/// names of a few KiB).
const MAX_OVERSIZED_HEAD: usize = 16 * 1024;

/// What a worker connection reads.
#[derive(Debug)]
pub(super) enum WorkerFrame {
    /// A packet of at most [`MAX_PACKET`] bytes.
    Packet(Packet),
    /// A packet over [`MAX_PACKET`], read through and thrown away but for
    /// its leading fields.
    Oversized(Oversized),
}

/// What is kept of a packet over [`MAX_PACKET`].
#[derive(Debug)]
pub(super) struct Oversized {
    pub(super) ptype: PacketType,
    /// Its declared payload length.
    pub(super) len: u32,
    /// Its leading NUL-ended fields, as many as were found in the first
    /// [`MAX_OVERSIZED_HEAD`] bytes, up to all but the last (the data).
    pub(super) fields: Vec<Bytes>,
}

impl Oversized {
    /// The size of its last field (a job's workload), when all the fields
    /// before it were found.
    fn data_len(&self) -> Option<u64> {
        let before = self.ptype.arg_count().checked_sub(1)?;
        (self.fields.len() == before).then(|| {
            let head: usize = self.fields.iter().map(Bytes::len).sum::<usize>() + before;
            u64::from(self.len).saturating_sub(head as u64)
        })
    }

    /// Why the job is refused, in one line for the client.
    pub(super) fn refusal(&self) -> String {
        let limit = MAX_PACKET;
        match self.data_len() {
            Some(data) if data > u64::from(limit) => {
                format!("request of {data} bytes is over the limit of {limit} bytes")
            }
            Some(data) => format!(
                "request of {data} bytes is over the limit of {limit} bytes with its handle, function and unique id ({} bytes)",
                self.len
            ),
            None => format!(
                "request packet of {} bytes is over the limit of {limit} bytes",
                self.len
            ),
        }
    }
}

/// A packet over [`MAX_PACKET`] being read through.
#[derive(Debug)]
struct Skipping {
    ptype: PacketType,
    len: u32,
    /// Payload bytes still to come.
    left: usize,
    /// The payload's first bytes, up to the last wanted NUL.
    head: Vec<u8>,
    /// NULs wanted in `head` (the fields before the data).
    wanted: usize,
    /// NULs in `head` so far.
    nuls: usize,
}

/// The codec of worker connections: the crate's [`GearmanCodec`], but a
/// packet over [`MAX_PACKET`] is read through as it streams in and thrown
/// away, but for its leading fields, and yields a
/// [`WorkerFrame::Oversized`]; memory stays bounded and the connection
/// stays up. Any other decode error fails the connection as before.
pub(super) struct WorkerCodec {
    inner: GearmanCodec,
    skipping: Option<Skipping>,
}

impl Default for WorkerCodec {
    fn default() -> Self {
        WorkerCodec {
            inner: GearmanCodec::with_max_payload_size(MAX_PACKET),
            skipping: None,
        }
    }
}

impl Decoder for WorkerCodec {
    type Item = WorkerFrame;
    type Error = gearman::GearmanError;

    fn decode(
        &mut self,
        src: &mut BytesMut,
    ) -> std::result::Result<Option<WorkerFrame>, Self::Error> {
        if self.skipping.is_none() {
            if src.len() < HEADER_LEN {
                return Ok(None);
            }
            let word = |at: usize| u32::from_be_bytes(src[at..at + 4].try_into().expect("4 bytes"));
            let len = word(8);
            if len <= MAX_PACKET {
                return Ok(self.inner.decode(src)?.map(WorkerFrame::Packet));
            }
            let magic: [u8; 4] = src[0..4].try_into().expect("4 bytes");
            if magic != RES_MAGIC && magic != REQ_MAGIC {
                return Err(gearman::GearmanError::BadMagic(magic));
            }
            let ptype = PacketType::try_from(word(4))?;
            src.advance(HEADER_LEN);
            self.skipping = Some(Skipping {
                ptype,
                len,
                left: len as usize,
                head: Vec::new(),
                wanted: ptype.arg_count().saturating_sub(1),
                nuls: 0,
            });
        }
        let s = self.skipping.as_mut().expect("skipping");
        let take = s.left.min(src.len());
        for &b in &src[..take] {
            if s.nuls == s.wanted || s.head.len() == MAX_OVERSIZED_HEAD {
                break;
            }
            s.head.push(b);
            s.nuls += usize::from(b == 0);
        }
        src.advance(take);
        s.left -= take;
        if s.left > 0 {
            return Ok(None);
        }
        let s = self.skipping.take().expect("skipping");
        let fields = s
            .head
            .split(|&b| b == 0)
            .take(s.nuls)
            .map(Bytes::copy_from_slice)
            .collect();
        Ok(Some(WorkerFrame::Oversized(Oversized {
            ptype: s.ptype,
            len: s.len,
            fields,
        })))
    }
}

impl Encoder<Packet> for WorkerCodec {
    type Error = gearman::GearmanError;

    fn encode(&mut self, pkt: Packet, dst: &mut BytesMut) -> std::result::Result<(), Self::Error> {
        self.inner.encode(pkt, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JOB_ASSIGN_UNIQ header and its leading fields, for `data_len`
    /// bytes of workload.
    fn assign_head(data_len: usize) -> Vec<u8> {
        let fields = b"H:vm:1\0inject_jobs\0\0";
        let mut pkt = RES_MAGIC.to_vec();
        pkt.extend(31u32.to_be_bytes());
        pkt.extend(((fields.len() + data_len) as u32).to_be_bytes());
        pkt.extend(fields);
        pkt
    }

    #[test]
    fn a_packet_over_the_limit_is_read_through_and_the_next_one_decodes() {
        let data_len = MAX_PACKET as usize + 10;
        let mut codec = WorkerCodec::default();
        let mut src = BytesMut::from(&assign_head(data_len)[..]);
        assert!(codec.decode(&mut src).unwrap().is_none());
        // The workload streams in; nothing of it is kept.
        let chunk = vec![b'a'; 1024 * 1024];
        let mut left = data_len;
        while left > 0 {
            let n = left.min(chunk.len());
            src.extend_from_slice(&chunk[..n]);
            left -= n;
            if left > 0 {
                assert!(codec.decode(&mut src).unwrap().is_none());
                assert!(src.is_empty(), "consumed as it comes");
            }
        }
        // The next packet behind it, in the same read.
        let mut noop = RES_MAGIC.to_vec();
        noop.extend(6u32.to_be_bytes());
        noop.extend(0u32.to_be_bytes());
        src.extend_from_slice(&noop);
        let Some(WorkerFrame::Oversized(big)) = codec.decode(&mut src).unwrap() else {
            panic!("an oversized frame");
        };
        assert_eq!(big.ptype, PacketType::JobAssignUniq);
        assert_eq!(big.fields, [&b"H:vm:1"[..], b"inject_jobs", b""]);
        assert_eq!(big.data_len(), Some(data_len as u64));
        assert_eq!(
            big.refusal(),
            format!("request of {data_len} bytes is over the limit of 67108864 bytes")
        );
        let Some(WorkerFrame::Packet(pkt)) = codec.decode(&mut src).unwrap() else {
            panic!("a packet");
        };
        assert_eq!(pkt.ptype, PacketType::Noop);
        assert!(src.is_empty());
    }

    #[test]
    fn packets_within_the_limit_decode_as_the_crate_decodes_them() {
        let mut codec = WorkerCodec::default();
        let mut pkt = assign_head(4);
        pkt.extend(b"data");
        let mut src = BytesMut::from(&pkt[..]);
        let Some(WorkerFrame::Packet(pkt)) = codec.decode(&mut src).unwrap() else {
            panic!("a packet");
        };
        assert_eq!(pkt.ptype, PacketType::JobAssignUniq);
        assert_eq!(pkt.args[3], &b"data"[..]);
        // A workload just under the limit, with the fields over it.
        let big = Oversized {
            ptype: PacketType::JobAssignUniq,
            len: MAX_PACKET + 5,
            fields: vec![
                Bytes::from_static(b"H:vm:1"),
                Bytes::from_static(b"f"),
                Bytes::new(),
            ],
        };
        assert_eq!(
            big.refusal(),
            "request of 67108859 bytes is over the limit of 67108864 bytes with its handle, function and unique id (67108869 bytes)"
        );
        let mut bad = BytesMut::from(&b"\0XYZ\0\0\0\x1f\x7f\xff\xff\xff"[..]);
        assert!(codec.decode(&mut bad).is_err(), "bad magic still fails");
    }
}
