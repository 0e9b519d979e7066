//! One fire-log record in bytes: the runs a write created or changed, the attempts it appended
//! and the fire cursors it moved. A small fixed binary layout (little-endian integers,
//! length-prefixed strings), because a record is encoded for every tick and decoded only when a
//! store opens after a crash.

use jiff::Timestamp;
use tug_core::run::{Attempt, Run};

/// What one write (a tick's fires, or a batch of run changes) did.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Record {
    /// Runs created by fires, with their ids.
    pub created: Vec<Run>,
    /// Runs changed, in their new state.
    pub changed: Vec<Run>,
    /// Finished attempts appended.
    pub attempts: Vec<Attempt>,
    /// Explicit fire cursors, `(job, milliseconds)`.
    pub cursors: Vec<(String, i64)>,
}

/// The layout's version, the first byte of every record.
const LAYOUT: u8 = 1;

impl Record {
    /// The record's bytes.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64 + 48 * (self.created.len() + self.changed.len())));
        w.u8(LAYOUT);
        for runs in [&self.created, &self.changed] {
            w.u32(runs.len() as u32);
            for r in runs {
                w.run(r);
            }
        }
        w.u32(self.attempts.len() as u32);
        for a in &self.attempts {
            w.u64(a.run_id);
            w.u32(a.attempt);
            w.str(a.state.as_str());
            w.opt_ts(a.started_at);
            w.opt_ts(a.finished_at);
            w.opt_i32(a.exit_code);
            w.opt_i32(a.signal);
            w.opt_str(a.reason.as_deref());
        }
        w.u32(self.cursors.len() as u32);
        for (job, at) in &self.cursors {
            w.str(job);
            w.i64(*at);
        }
        w.0
    }

    /// A record from its bytes; `Err` says what is wrong with them.
    pub(super) fn decode(bytes: &[u8]) -> Result<Record, String> {
        let mut r = Reader(bytes);
        let layout = r.u8()?;
        if layout != LAYOUT {
            return Err(format!("unknown record layout {layout} (this build writes {LAYOUT})"));
        }
        let mut runs = [Vec::new(), Vec::new()];
        for list in &mut runs {
            let n = r.u32()?;
            for _ in 0..n {
                list.push(r.run()?);
            }
        }
        let [created, changed] = runs;
        let mut attempts = Vec::new();
        for _ in 0..r.u32()? {
            attempts.push(Attempt {
                run_id: r.u64()?,
                attempt: r.u32()?,
                state: r.str()?.parse()?,
                started_at: r.opt_ts()?,
                finished_at: r.opt_ts()?,
                exit_code: r.opt_i32()?,
                signal: r.opt_i32()?,
                reason: r.opt_str()?,
            });
        }
        let mut cursors = Vec::new();
        for _ in 0..r.u32()? {
            cursors.push((r.str()?, r.i64()?));
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the end of the record", r.0.len()));
        }
        Ok(Record { created, changed, attempts, cursors })
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn opt_i32(&mut self, v: Option<i32>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    fn ts(&mut self, t: Timestamp) {
        self.i64(t.as_millisecond());
    }
    fn opt_ts(&mut self, t: Option<Timestamp>) {
        match t {
            None => self.u8(0),
            Some(t) => {
                self.u8(1);
                self.ts(t);
            }
        }
    }
    fn run(&mut self, r: &Run) {
        self.u64(r.id);
        self.str(&r.job);
        self.ts(r.scheduled_at);
        self.str(r.trigger.as_str());
        self.str(r.state.as_str());
        self.u32(r.attempt);
        self.ts(r.created_at);
        self.opt_ts(r.started_at);
        self.opt_ts(r.finished_at);
        self.opt_i32(r.exit_code);
        self.opt_i32(r.signal);
        self.opt_str(r.reason.as_deref());
        self.opt_str(r.agent.as_deref());
        self.opt_ts(r.retry_at);
        let late = r.late_report.as_ref().map(|l| serde_json::to_string(l).unwrap_or_default());
        self.opt_str(late.as_deref());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err(format!("record cut short: {n} bytes wanted, {} left", self.0.len()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| format!("a string that is not UTF-8: {e}"))
    }
    fn present(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("bad option marker {b}")),
        }
    }
    fn opt_str(&mut self) -> Result<Option<String>, String> {
        if self.present()? { self.str().map(Some) } else { Ok(None) }
    }
    fn opt_i32(&mut self) -> Result<Option<i32>, String> {
        if self.present()? { Ok(Some(i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))) } else { Ok(None) }
    }
    fn ts(&mut self) -> Result<Timestamp, String> {
        let ms = self.i64()?;
        Timestamp::from_millisecond(ms).map_err(|e| format!("timestamp {ms} out of range: {e}"))
    }
    fn opt_ts(&mut self) -> Result<Option<Timestamp>, String> {
        if self.present()? { self.ts().map(Some) } else { Ok(None) }
    }
    fn run(&mut self) -> Result<Run, String> {
        Ok(Run {
            id: self.u64()?,
            job: self.str()?,
            scheduled_at: self.ts()?,
            trigger: self.str()?.parse()?,
            state: self.str()?.parse()?,
            attempt: self.u32()?,
            created_at: self.ts()?,
            started_at: self.opt_ts()?,
            finished_at: self.opt_ts()?,
            exit_code: self.opt_i32()?,
            signal: self.opt_i32()?,
            reason: self.opt_str()?,
            agent: self.opt_str()?,
            retry_at: self.opt_ts()?,
            late_report: match self.opt_str()? {
                Some(json) => Some(serde_json::from_str(&json).map_err(|e| format!("bad late report: {e}"))?),
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_core::run::{LateReport, RunState, Trigger};

    fn ts(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(ms).unwrap()
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let bare = Run {
            id: 7,
            job: "nightly".into(),
            scheduled_at: ts(1_000),
            trigger: Trigger::Schedule,
            state: RunState::Starting,
            attempt: 1,
            created_at: ts(999),
            started_at: None,
            finished_at: None,
            exit_code: None,
            signal: None,
            reason: None,
            agent: Some("a1".into()),
            retry_at: None,
            late_report: None,
        };
        let full = Run {
            id: 8,
            trigger: Trigger::Misfire,
            state: RunState::Failed,
            attempt: 3,
            started_at: Some(ts(1_100)),
            finished_at: Some(ts(1_200)),
            exit_code: Some(-2),
            signal: Some(9),
            reason: Some("exit code 2 — ünïcode".into()),
            retry_at: Some(ts(5_000)),
            late_report: Some(LateReport {
                attempt: 2,
                state: RunState::Succeeded,
                at: ts(1_300),
                exit_code: Some(0),
                signal: None,
                reason: None,
            }),
            ..bare.clone()
        };
        let attempt = Attempt {
            run_id: 8,
            attempt: 2,
            state: RunState::Lost,
            started_at: Some(ts(1_050)),
            finished_at: None,
            exit_code: None,
            signal: Some(15),
            reason: Some("agent lost".into()),
        };
        let record = Record {
            created: vec![bare.clone()],
            changed: vec![full, bare],
            attempts: vec![attempt],
            cursors: vec![("nightly".into(), 4_000)],
        };
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        assert_eq!(Record::decode(&Record::default().encode()).unwrap(), Record::default());
    }

    #[test]
    fn damaged_bytes_are_an_error_not_a_record() {
        let record = Record { cursors: vec![("j".into(), 1)], ..Default::default() };
        let bytes = record.encode();
        let cut = Record::decode(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(cut.contains("cut short"), "{cut}");
        let mut long = bytes.clone();
        long.push(0);
        assert!(Record::decode(&long).unwrap_err().contains("after the end"));
        let mut other = bytes;
        other[0] = 9;
        assert!(Record::decode(&other).unwrap_err().contains("unknown record layout 9"));
    }
}
