//! Write-behind for target records: a rollout's target transitions are staged in memory and
//! persisted together, in fenced writes of up to [`WRITE_CHUNK`] records and
//! [`WRITE_CHUNK_BYTES`] of keys and values, at most [`FLUSH_DELAY`] after the first staged
//! change (group commit). A target that changes many
//! times in that window is written once, with its latest record.
//!
//! Why this keeps every guarantee: the records are progress, not the record of what ran (the
//! agents' history tables are). A leader that crashes before a flush loses only transitions
//! that a new leader re-derives: it re-plans every unfinished target from its agent's report
//! (a stale plan is refused by the agent's `PLAN_STALE` precondition), so nothing is applied
//! twice. A write the store fails is retried until it is stored (`durable.rs`): the records
//! stay staged, in order, while the store is away, and the term's end (the lease lost or the
//! token refused), not a write error, stops the rollout. Every write is still fenced with the
//! term's token, and the rollout engine flushes
//! before anything that depends on the records being durable: the end of each wave (budget,
//! gate), and the rollout's terminal state.

use std::collections::BTreeMap;
#[cfg(test)]
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::rollout::{TargetRecord, target_key};
use crate::store::WriteOp;

use super::{Engine, EngineError, Term};

/// The most puts in one fenced write (etcd's default --max-txn-ops is 128).
pub(crate) const WRITE_CHUNK: usize = 100;

/// The most bytes of keys and values in one fenced write: etcd refuses a request larger than
/// its --max-request-bytes (1.5 MiB by default), and a record grows with its planned steps
/// (about 130 bytes each), so 100 records of a long plan would not fit. The rest of the
/// 1.5 MiB is left for the transaction's framing.
pub(crate) const WRITE_CHUNK_BYTES: usize = 1024 * 1024;

/// How long staged records wait for company before they are written.
const FLUSH_DELAY: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Pending {
    records: BTreeMap<String, TargetRecord>,
    /// A delayed flush is scheduled.
    scheduled: bool,
    /// A background flush failed for good (a record that cannot be encoded; store errors are
    /// retried and a fenced write ends the term); later calls report it.
    failed: Option<Arc<EngineError>>,
}

/// The staged target records of one rollout in one term.
pub(crate) struct TargetWriter {
    engine: Arc<Engine>,
    term: Term,
    rollout: String,
    pending: Mutex<Pending>,
    /// Serializes writes, so a target's records reach the store in the order they were staged.
    io: tokio::sync::Mutex<()>,
}

impl TargetWriter {
    pub(crate) fn new(engine: Arc<Engine>, term: Term, rollout: &str) -> Arc<TargetWriter> {
        Arc::new(TargetWriter {
            engine,
            term,
            rollout: rollout.to_owned(),
            pending: Mutex::new(Pending::default()),
            io: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stage `rec`; it is written within [`FLUSH_DELAY`] (or by the next `flush`).
    pub(crate) fn stage(self: &Arc<Self>, rec: &TargetRecord) -> Result<(), EngineError> {
        let schedule = {
            let mut p = self.lock();
            if let Some(e) = &p.failed {
                return Err(EngineError::WriteBehind(e.clone()));
            }
            p.records.insert(rec.target_id.clone(), rec.clone());
            let schedule = !p.scheduled;
            p.scheduled = true;
            schedule
        };
        if schedule {
            let me = self.clone();
            self.engine.tasks.spawn(async move {
                tokio::select! {
                    _ = me.term.cancel.cancelled() => {}
                    _ = tokio::time::sleep(FLUSH_DELAY) => {
                        if let Err(e) = me.flush().await
                            && !matches!(e, EngineError::Fenced(_))
                        {
                            tracing::warn!(rollout = %me.rollout, "writing target records: {e}");
                            me.lock().failed = Some(Arc::new(e));
                        }
                    }
                }
            });
        }
        Ok(())
    }

    /// Write everything staged so far (fenced) and tell watchers.
    pub(crate) async fn flush(&self) -> Result<(), EngineError> {
        let _io = self.io.lock().await;
        let records = {
            let mut p = self.lock();
            if let Some(e) = &p.failed {
                return Err(EngineError::WriteBehind(e.clone()));
            }
            p.scheduled = false;
            std::mem::take(&mut p.records)
        };
        if records.is_empty() {
            return Ok(());
        }
        let records: Vec<TargetRecord> = records.into_values().collect();
        write_records(&self.engine, &self.term, &self.rollout, &records).await?;
        self.engine.notify(&self.rollout);
        Ok(())
    }
}

/// Write `records` of `rollout` in fenced chunks of at most [`WRITE_CHUNK`] records and
/// [`WRITE_CHUNK_BYTES`], each encoded while the chunk before it is being written (the
/// store's own thread or server writes one chunk while this task encodes the next; a rollout
/// of 100,000 targets never holds more than two chunks encoded).
pub(crate) async fn write_records(
    engine: &Engine,
    term: &Term,
    rollout: &str,
    records: &[TargetRecord],
) -> Result<(), EngineError> {
    let (mut start, (mut ops, mut end)) = (0, encode_chunk(rollout, records, 0)?);
    while !ops.is_empty() {
        let next = async { encode_chunk(rollout, records, end) };
        let (written, next) = tokio::join!(engine.write_durably(term, ops), next);
        written?;
        engine
            .live
            .put_targets(term.token, rollout, &records[start..end]);
        start = end;
        (ops, end) = next?;
    }
    Ok(())
}

/// The puts of the chunk of `records` that starts at `start`, and where the next one starts.
fn encode_chunk(
    rollout: &str,
    records: &[TargetRecord],
    start: usize,
) -> Result<(Vec<WriteOp>, usize), EngineError> {
    let (mut chunk, mut bytes) = (Vec::new(), 0);
    for (i, t) in records.iter().enumerate().skip(start) {
        if chunk.len() >= WRITE_CHUNK {
            // Full by count: the next record is not encoded twice.
            return Ok((chunk, i));
        }
        let op = WriteOp::Put {
            key: target_key(rollout, &t.target_id),
            value: serde_json::to_vec(t).map_err(EngineError::Encode)?,
        };
        let size = op_bytes(&op);
        if starts_chunk(chunk.len(), bytes, size, WRITE_CHUNK, WRITE_CHUNK_BYTES) {
            return Ok((chunk, i));
        }
        bytes += size;
        chunk.push(op);
    }
    Ok((chunk, records.len()))
}

fn op_bytes(op: &WriteOp) -> usize {
    match op {
        WriteOp::Put { key, value } => key.len() + value.len(),
        WriteOp::Delete { key } => key.len(),
    }
}

/// Whether an item of `size` bytes goes in a new chunk after a chunk of `ops` items and
/// `bytes` bytes: at most `max_ops` items and `max_bytes` bytes each (an item larger than
/// `max_bytes` alone goes in a chunk of its own: the store says whether it fits).
fn starts_chunk(ops: usize, bytes: usize, size: usize, max_ops: usize, max_bytes: usize) -> bool {
    ops > 0 && (ops >= max_ops.max(1) || bytes + size > max_bytes)
}

/// The chunks [`write_records`] cuts `sizes` into, as ranges.
#[cfg(test)]
fn chunk_bounds(sizes: &[usize], max_ops: usize, max_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &size) in sizes.iter().enumerate() {
        if starts_chunk(i - start, bytes, size, max_ops, max_bytes) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::chunk_bounds;

    #[test]
    fn chunks_stop_at_the_op_count_and_at_the_byte_budget() {
        // By count: 250 small records in writes of 100.
        assert_eq!(
            chunk_bounds(&[10; 250], 100, 1 << 20),
            vec![0..100, 100..200, 200..250]
        );
        // By bytes: 400-byte records, 1,000 bytes a write: two per write.
        assert_eq!(chunk_bounds(&[400; 5], 100, 1000), vec![0..2, 2..4, 4..5]);
        // A record alone over the budget gets a write of its own; its neighbours are not
        // held back with it.
        assert_eq!(
            chunk_bounds(&[10, 5000, 10, 10], 100, 1000),
            vec![0..1, 1..2, 2..4]
        );
        // Exactly the budget fits.
        assert_eq!(chunk_bounds(&[500, 500, 1], 100, 1000), vec![0..2, 2..3]);
        assert!(chunk_bounds(&[], 100, 1000).is_empty());
    }
}
