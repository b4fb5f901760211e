//! The journal of calls in progress, so a restarted agent resumes them.
//!
//! Append-only, one record per change: every SIP message of a dialog the
//! engine follows (replayed through the same code, the dialogs and their
//! SDP come back exactly as they were), a call's flags whenever they
//! change, its loss windows at a graceful stop, the end of every call whose
//! record was written, and how the programs were attached. Each record is framed `[length u32][crc32
//! u32][kind u8][body]`, little-endian, after a header of magic and format
//! version.
//!
//! Durability: records are written to the file after every SIP batch and
//! every poll (a crash of the agent loses nothing: the kernel has them),
//! and `fdatasync`ed once per poll (a crash of the machine loses at most
//! one poll interval).
//!
//! The journal is compacted when it is over [`COMPACT_MIN_BYTES`] and more
//! than half of it is about calls that ended: the records of live calls are
//! copied, in order, to a new file that replaces it.
//!
//! A journal of another format version, or one that cannot be read, is set
//! aside with one log line and the agent starts clean; a torn last record
//! (a crash mid-write) is cut off.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use crate::{
    calls::detect::{Flag, LossWindow},
    calls::FastMap,
    kernel::Attachment,
};

const MAGIC: &[u8; 8] = b"DETJRNL\0";
/// Bumped whenever a record's layout or meaning changes.
pub const JOURNAL_VERSION: u32 = 1;
const HEADER_LEN: u64 = 12;
/// The journal is not compacted below this size.
pub const COMPACT_MIN_BYTES: u64 = 64 << 20;
/// A record larger than this is damage, not data (SIP messages are far
/// smaller).
const MAX_RECORD: u32 = 1 << 20;

const KIND_SIP: u8 = 1;
const KIND_FLAGS: u8 = 2;
const KIND_ENDED: u8 = 3;
const KIND_ATTACHMENT: u8 = 4;
const KIND_WINDOWS: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot use the state directory {dir}: {source}")]
    Dir { dir: String, source: io::Error },
    #[error("journal {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// A record read back, in the order it was written.
#[derive(Clone, Debug, PartialEq)]
pub enum Replay {
    Sip {
        ts: f64,
        bytes: Vec<u8>,
    },
    Flags {
        call_id: String,
        flags: Vec<Flag>,
    },
    Ended {
        call_id: String,
    },
    Windows {
        call_id: String,
        windows: Vec<LossWindow>,
    },
}

/// What the journal held at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    pub records: Vec<Replay>,
    /// How the previous agent attached the programs.
    pub attachment: Option<Attachment>,
    /// The calls log's length after the last record the journal knows was
    /// written there.
    pub calls_log_end: Option<u64>,
    /// Why the journal (or its tail) was set aside, for the log.
    pub damage: Option<String>,
}

/// Where a live record sits in the file.
#[derive(Clone, Copy, Debug)]
struct Span {
    offset: u64,
    len: u32,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Records not yet written to the file.
    pending: Vec<u8>,
    /// The file's length plus what is pending.
    len: u64,
    /// The records of each live call.
    live: FastMap<String, Vec<Span>>,
    live_bytes: u64,
    attachment: Option<Span>,
    compact_min: u64,
    /// Compactions so far (for tests and the log).
    pub compactions: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads back what it holds.
    pub fn open(path: &Path) -> Result<(Self, Recovered), JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::Dir {
                dir: dir.display().to_string(),
                source,
            })?;
        }
        let io_error = |source| JournalError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut data = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut data).map_err(io_error)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e)),
        }
        let mut recovered = Recovered::default();
        let mut journal = Self {
            path: path.to_path_buf(),
            file: File::open("/dev/null").map_err(io_error)?,
            pending: Vec::new(),
            len: 0,
            live: FastMap::default(),
            live_bytes: 0,
            attachment: None,
            compact_min: COMPACT_MIN_BYTES,
            compactions: 0,
        };
        let good = if data.is_empty() {
            0
        } else if data.len() < HEADER_LEN as usize || &data[..8] != MAGIC {
            recovered.damage = Some("not a journal of this program".into());
            0
        } else {
            let version = u32::from_le_bytes(data[8..12].try_into().unwrap_or_default());
            if version != JOURNAL_VERSION {
                recovered.damage = Some(format!(
                    "format version {version}, this build reads version {JOURNAL_VERSION}"
                ));
                0
            } else {
                journal.read_records(&data, &mut recovered)
            }
        };
        if good == 0 && !data.is_empty() {
            // Kept beside for a post-mortem, never read again.
            let aside = path.with_extension("journal.bad");
            let _ = std::fs::rename(path, &aside);
            journal.live.clear();
            journal.live_bytes = 0;
            journal.attachment = None;
            recovered.records.clear();
            recovered.attachment = None;
            recovered.calls_log_end = None;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(io_error)?;
        if good == 0 {
            file.set_len(0).map_err(io_error)?;
            let mut header = MAGIC.to_vec();
            header.extend_from_slice(&JOURNAL_VERSION.to_le_bytes());
            file.write_all(&header).map_err(io_error)?;
            journal.len = HEADER_LEN;
        } else {
            // A torn tail is cut off so new records follow the good ones.
            file.set_len(good).map_err(io_error)?;
            journal.len = good;
        }
        file.sync_data().map_err(io_error)?;
        journal.file = file;
        Ok((journal, recovered))
    }

    /// Reads the records after the header; returns the length of the good
    /// prefix (a torn or damaged record ends it).
    fn read_records(&mut self, data: &[u8], out: &mut Recovered) -> u64 {
        let mut at = HEADER_LEN as usize;
        while at < data.len() {
            let decoded = frame_at(data, at).and_then(|record| {
                let span = Span {
                    offset: at as u64,
                    len: record.total_len,
                };
                self.decode(record.kind, record.body, span, out)
                    .map(|replay| (replay, record.total_len))
            });
            let Some((replay, len)) = decoded else {
                out.damage = Some(format!(
                    "a damaged or torn record at byte {at} of {}: the rest is cut off",
                    data.len()
                ));
                break;
            };
            at += len as usize;
            out.records.extend(replay);
        }
        at as u64
    }

    /// One record's meaning: `Some(None)` for the attachment (kept aside),
    /// `None` for a body that does not parse.
    fn decode(
        &mut self,
        kind: u8,
        body: &[u8],
        span: Span,
        out: &mut Recovered,
    ) -> Option<Option<Replay>> {
        Some(Some(match kind {
            KIND_SIP => {
                let (call_id, rest) = read_call_id(body)?;
                let ts = f64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
                self.track(call_id, span);
                Replay::Sip {
                    ts,
                    bytes: rest[8..].to_vec(),
                }
            }
            KIND_FLAGS => {
                let (call_id, rest) = read_call_id(body)?;
                let flags: Vec<Flag> = serde_json::from_slice(rest).ok()?;
                self.track(call_id, span);
                Replay::Flags {
                    call_id: call_id.to_string(),
                    flags,
                }
            }
            KIND_ENDED => {
                let (call_id, rest) = read_call_id(body)?;
                let log_end = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
                if log_end != u64::MAX {
                    out.calls_log_end = Some(log_end);
                }
                self.untrack(call_id);
                Replay::Ended {
                    call_id: call_id.to_string(),
                }
            }
            KIND_WINDOWS => {
                let (call_id, rest) = read_call_id(body)?;
                let windows: Vec<LossWindow> = serde_json::from_slice(rest).ok()?;
                self.track(call_id, span);
                Replay::Windows {
                    call_id: call_id.to_string(),
                    windows,
                }
            }
            KIND_ATTACHMENT => {
                out.attachment = Some(serde_json::from_slice(body).ok()?);
                self.attachment = Some(span);
                return Some(None);
            }
            _ => return None,
        }))
    }

    fn track(&mut self, call_id: &str, span: Span) {
        self.live_bytes += u64::from(span.len);
        match self.live.get_mut(call_id) {
            Some(spans) => spans.push(span),
            None => {
                self.live.insert(call_id.to_string(), vec![span]);
            }
        }
    }

    fn untrack(&mut self, call_id: &str) {
        if let Some(spans) = self.live.remove(call_id) {
            self.live_bytes -= spans.iter().map(|s| u64::from(s.len)).sum::<u64>();
        }
    }

    /// Appends a record; returns where it sits.
    fn append(&mut self, kind: u8, body: &[&[u8]]) -> Span {
        let body_len: usize = body.iter().map(|b| b.len()).sum();
        let len = u32::try_from(1 + body_len).unwrap_or(u32::MAX);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[kind]);
        for part in body {
            crc.update(part);
        }
        let span = Span {
            offset: self.len,
            len: 8 + len,
        };
        self.pending.extend_from_slice(&len.to_le_bytes());
        self.pending
            .extend_from_slice(&crc.finalize().to_le_bytes());
        self.pending.push(kind);
        for part in body {
            self.pending.extend_from_slice(part);
        }
        self.len += u64::from(span.len);
        span
    }

    /// Appends a record about the live call `call_id` (its id first, then
    /// `body`), kept by compaction while the call lives.
    fn append_live(&mut self, kind: u8, call_id: &str, body: &[&[u8]]) {
        let id = call_id_field(call_id);
        let mut parts: Vec<&[u8]> = vec![&id, call_id.as_bytes()];
        parts.extend_from_slice(body);
        let span = self.append(kind, &parts);
        self.track(call_id, span);
    }

    /// A SIP message of the dialog `call_id`, seen at `ts`.
    pub fn sip(&mut self, call_id: &str, ts: f64, bytes: &[u8]) {
        if bytes.len() + call_id.len() + 16 > MAX_RECORD as usize {
            return;
        }
        self.append_live(KIND_SIP, call_id, &[&ts.to_le_bytes(), bytes]);
    }

    /// A call's flags after a change.
    pub fn flags(&mut self, call_id: &str, flags: &[Flag]) {
        let json = serde_json::to_vec(flags).unwrap_or_default();
        self.append_live(KIND_FLAGS, call_id, &[&json]);
    }

    /// A call's loss windows (written at a graceful stop).
    pub fn windows(&mut self, call_id: &str, windows: &[LossWindow]) {
        let json = serde_json::to_vec(windows).unwrap_or_default();
        self.append_live(KIND_WINDOWS, call_id, &[&json]);
    }

    /// A call's record was written (the calls log then `calls_log_end`
    /// bytes long): its records are dead.
    pub fn ended(&mut self, call_id: &str, calls_log_end: Option<u64>) {
        let id = call_id_field(call_id);
        let end = calls_log_end.unwrap_or(u64::MAX).to_le_bytes();
        self.append(KIND_ENDED, &[&id, call_id.as_bytes(), &end]);
        self.untrack(call_id);
    }

    /// How the programs are attached now.
    pub fn attachment(&mut self, attachment: &Attachment) {
        let json = serde_json::to_vec(attachment).unwrap_or_default();
        self.attachment = Some(self.append(KIND_ATTACHMENT, &[&json]));
    }

    /// Writes what is pending to the file (not yet to the disk).
    pub fn flush(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let at = self.len - self.pending.len() as u64;
        self.file
            .write_all_at(&self.pending, at)
            .map_err(|source| self.io_error(source))?;
        self.pending.clear();
        Ok(())
    }

    /// Writes what is pending and waits for the disk.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.flush()?;
        self.file
            .sync_data()
            .map_err(|source| self.io_error(source))
    }

    fn io_error(&self, source: io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Calls the journal holds records of.
    pub fn live_calls(&self) -> usize {
        self.live.len()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= HEADER_LEN
    }

    /// Compacts when the journal is large and mostly dead; whether it did.
    pub fn maybe_compact(&mut self) -> Result<bool, JournalError> {
        let live = HEADER_LEN + self.live_bytes + self.attachment.map_or(0, |s| u64::from(s.len));
        if self.len < self.compact_min || self.len < 2 * live {
            return Ok(false);
        }
        self.compact()?;
        Ok(true)
    }

    /// Copies the live records, in order, to a new journal that replaces
    /// this one.
    fn compact(&mut self) -> Result<(), JournalError> {
        self.flush()?;
        let mut spans: Vec<(u64, u32, Option<&str>)> = self
            .live
            .iter()
            .flat_map(|(id, spans)| {
                spans
                    .iter()
                    .map(move |s| (s.offset, s.len, Some(id.as_str())))
            })
            .collect();
        if let Some(a) = self.attachment {
            spans.push((a.offset, a.len, None));
        }
        spans.sort_unstable_by_key(|s| s.0);
        let tmp = self.path.with_extension("journal.tmp");
        let mut out =
            Vec::with_capacity(usize::try_from(HEADER_LEN + self.live_bytes).unwrap_or(0) + 4096);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&JOURNAL_VERSION.to_le_bytes());
        let mut live: FastMap<String, Vec<Span>> = FastMap::default();
        let mut attachment = None;
        let mut record = Vec::new();
        for (offset, len, call_id) in spans {
            record.resize(len as usize, 0);
            self.file
                .read_exact_at(&mut record, offset)
                .map_err(|source| self.io_error(source))?;
            let span = Span {
                offset: out.len() as u64,
                len,
            };
            out.extend_from_slice(&record);
            match call_id {
                Some(id) => match live.get_mut(id) {
                    Some(list) => list.push(span),
                    None => {
                        live.insert(id.to_string(), vec![span]);
                    }
                },
                None => attachment = Some(span),
            }
        }
        let write = || -> io::Result<File> {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            OpenOptions::new().read(true).write(true).open(&self.path)
        };
        self.file = write().map_err(|source| self.io_error(source))?;
        self.len = out.len() as u64;
        self.live = live;
        self.attachment = attachment;
        self.compactions += 1;
        Ok(())
    }

    #[cfg(test)]
    fn set_compact_min(&mut self, bytes: u64) {
        self.compact_min = bytes;
    }
}

struct Frame<'a> {
    kind: u8,
    body: &'a [u8],
    total_len: u32,
}

/// The record at `at`, if whole and its checksum right.
fn frame_at(data: &[u8], at: usize) -> Option<Frame<'_>> {
    let head = data.get(at..at + 8)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?);
    let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let payload = data.get(at + 8..at + 8 + len as usize)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some(Frame {
        kind: payload[0],
        body: &payload[1..],
        total_len: 8 + len,
    })
}

fn call_id_field(call_id: &str) -> [u8; 2] {
    u16::try_from(call_id.len())
        .unwrap_or(u16::MAX)
        .to_le_bytes()
}

fn read_call_id(body: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_le_bytes(body.get(..2)?.try_into().ok()?));
    let id = std::str::from_utf8(body.get(2..2 + len)?).ok()?;
    Some((id, &body[2 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        calls::detect::{FlagDirection, FlagKind},
        kernel::{TcAttachPath, XdpAttachMode},
    };

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("detector-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn flag() -> Flag {
        Flag {
            kind: FlagKind::OneWay,
            direction: FlagDirection::CalleeToCaller,
            since_epoch: 10.0,
            flagged_epoch: 15.5,
            cleared_epoch: None,
        }
    }

    fn attachment() -> Attachment {
        Attachment {
            xdp_mode: XdpAttachMode::Skb,
            tc_path: TcAttachPath::Netlink,
            adopted: false,
            map_layout: detector_common::MAP_LAYOUT_VERSION,
        }
    }

    #[test]
    fn records_come_back_in_order_with_the_attachment() {
        let path = dir("order").join("calls-eth0.journal");
        let (mut j, recovered) = Journal::open(&path).unwrap();
        assert!(recovered.records.is_empty() && recovered.damage.is_none());
        j.attachment(&attachment());
        j.sip("a", 1.5, b"INVITE a");
        j.sip("b", 2.0, b"INVITE b");
        j.flags("a", &[flag()]);
        j.ended("b", Some(300));
        j.sip("a", 3.0, b"BYE a");
        let window = (
            crate::calls::CallDirection::CallerToCallee,
            vec![(5.0, 100, 2), (6.0, 150, 3)],
        );
        j.windows("a", std::slice::from_ref(&window));
        j.sync().unwrap();
        drop(j);

        let (j, recovered) = Journal::open(&path).unwrap();
        assert_eq!(recovered.damage, None);
        assert_eq!(recovered.attachment, Some(attachment()));
        assert_eq!(recovered.calls_log_end, Some(300));
        assert_eq!(
            recovered.records,
            vec![
                Replay::Sip {
                    ts: 1.5,
                    bytes: b"INVITE a".to_vec()
                },
                Replay::Sip {
                    ts: 2.0,
                    bytes: b"INVITE b".to_vec()
                },
                Replay::Flags {
                    call_id: "a".into(),
                    flags: vec![flag()]
                },
                Replay::Ended {
                    call_id: "b".into()
                },
                Replay::Sip {
                    ts: 3.0,
                    bytes: b"BYE a".to_vec()
                },
                Replay::Windows {
                    call_id: "a".into(),
                    windows: vec![window],
                },
            ]
        );
        assert_eq!(j.live_calls(), 1, "b ended, a lives");
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_new_records_follow_the_good_ones() {
        let path = dir("torn").join("j");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.sip("a", 1.0, b"INVITE a");
        j.sip("a", 2.0, b"ACK a");
        j.sync().unwrap();
        let whole = j.len();
        drop(j);
        // A crash in the middle of writing the second record.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(whole - 3).unwrap();
        drop(file);

        let (mut j, recovered) = Journal::open(&path).unwrap();
        assert!(recovered.damage.unwrap().contains("torn"));
        assert_eq!(recovered.records.len(), 1);
        j.sip("a", 3.0, b"BYE a");
        j.sync().unwrap();
        drop(j);
        let (_, recovered) = Journal::open(&path).unwrap();
        assert_eq!(recovered.damage, None);
        let ts: Vec<f64> = recovered
            .records
            .iter()
            .map(|r| match r {
                Replay::Sip { ts, .. } => *ts,
                _ => 0.0,
            })
            .collect();
        assert_eq!(ts, [1.0, 3.0]);
    }

    #[test]
    fn a_flipped_byte_ends_the_journal_there() {
        let path = dir("crc").join("j");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.sip("a", 1.0, b"INVITE a");
        let second = j.len();
        j.sip("a", 2.0, b"ACK a");
        j.sync().unwrap();
        drop(j);
        let mut data = std::fs::read(&path).unwrap();
        let at = usize::try_from(second).unwrap() + 12;
        data[at] ^= 0xff;
        std::fs::write(&path, data).unwrap();
        let (j, recovered) = Journal::open(&path).unwrap();
        assert_eq!(recovered.records.len(), 1);
        assert!(recovered.damage.is_some());
        assert_eq!(j.len(), second);
    }

    #[test]
    fn a_journal_of_another_version_or_no_journal_at_all_is_set_aside() {
        for (name, content) in [
            ("version", {
                let mut v = MAGIC.to_vec();
                v.extend_from_slice(&99u32.to_le_bytes());
                v.extend_from_slice(b"whatever follows");
                v
            }),
            ("garbage", b"\x00\x01not a journal at all".to_vec()),
        ] {
            let path = dir(name).join("calls-eth0.journal");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &content).unwrap();
            let (j, recovered) = Journal::open(&path).unwrap();
            assert!(recovered.records.is_empty(), "{name}");
            assert!(recovered.damage.is_some(), "{name}");
            assert!(j.is_empty());
            assert_eq!(
                std::fs::read(path.with_extension("journal.bad")).unwrap(),
                content,
                "{name}: kept aside"
            );
            // And the new journal works.
            drop(j);
            let (_, again) = Journal::open(&path).unwrap();
            assert_eq!(again.damage, None, "{name}");
        }
    }

    #[test]
    fn compaction_keeps_the_live_calls_records_in_order_and_drops_the_ended() {
        let path = dir("compact").join("j");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.set_compact_min(4096);
        j.attachment(&attachment());
        let mut compacted = false;
        for i in 0..200u32 {
            let id = format!("call-{i}");
            j.sip(
                &id,
                f64::from(i),
                format!("INVITE {i} {}", "x".repeat(100)).as_bytes(),
            );
            if i % 10 == 3 {
                j.flags(&id, &[flag()]);
            }
            // Every call but every 50th ends.
            if i % 50 != 7 {
                j.ended(&id, None);
            }
            compacted |= j.maybe_compact().unwrap();
        }
        j.sip("call-7", 1000.0, b"BYE 7");
        j.sync().unwrap();
        assert!(compacted && j.compactions > 0);
        assert!(j.len() < 4096, "compacted to {} bytes", j.len());
        drop(j);

        let (j, recovered) = Journal::open(&path).unwrap();
        assert_eq!(recovered.damage, None);
        assert_eq!(recovered.attachment, Some(attachment()));
        assert_eq!(j.live_calls(), 4);
        // Replayed, the records leave exactly the live calls, and the
        // first records are theirs, in the order they were written.
        let mut live: Vec<String> = Vec::new();
        let mut order: Vec<f64> = Vec::new();
        for record in &recovered.records {
            match record {
                Replay::Sip { ts, bytes } => {
                    let text = String::from_utf8_lossy(bytes);
                    let id = text.split(' ').nth(1).unwrap_or_default().to_string();
                    if !live.contains(&id) {
                        live.push(id);
                    }
                    order.push(*ts);
                }
                Replay::Ended { call_id } => {
                    let i: String = call_id.trim_start_matches("call-").into();
                    live.retain(|l| *l != i);
                }
                Replay::Flags { .. } | Replay::Windows { .. } => {}
            }
        }
        assert_eq!(live, ["7", "57", "107", "157"]);
        assert_eq!(order[..4], [7.0, 57.0, 107.0, 157.0]);
        assert_eq!(order.last(), Some(&1000.0));
    }
}
