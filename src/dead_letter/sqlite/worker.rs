//! The thread that owns the connection: it runs the queue's jobs in order,
//! and commits the pushes waiting together in one transaction.

use std::sync::mpsc;

use rusqlite::{Connection, TransactionBehavior};

use super::rows::insert;
use crate::dead_letter::{DeadLetterId, FailedRequest, QueueError};

/// Work for the queue's thread.
pub(super) enum Job {
    /// Pushes are committed in groups: the pushes waiting together share one
    /// transaction, so a burst of give-ups costs one write to disk, not one
    /// each.
    Push(Box<FailedRequest>, Reply<DeadLetterId>),
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

pub(super) type Reply<T> = tokio::sync::oneshot::Sender<Result<T, QueueError>>;

/// The most pushes committed in one transaction.
const MAX_GROUP: usize = 256;

/// Runs jobs in order until every clone of the queue is gone.
pub(super) fn serve(mut conn: Connection, inbox: mpsc::Receiver<Job>) {
    let mut next = inbox.recv().ok();
    while let Some(job) = next.take() {
        match job {
            Job::Run(job) => job(&mut conn),
            Job::Push(request, reply) => {
                let mut group = vec![(request, reply)];
                while group.len() < MAX_GROUP {
                    match inbox.try_recv() {
                        Ok(Job::Push(request, reply)) => group.push((request, reply)),
                        // Taken next, after the group: order is kept.
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                push_group(&mut conn, group);
            }
        }
        if next.is_none() {
            next = inbox.recv().ok();
        }
    }
}

/// Inserts each request of the group in one transaction. A failed insert
/// fails only its own push (SQLite undoes just that statement); a failed
/// commit fails them all.
fn push_group(conn: &mut Connection, group: Vec<(Box<FailedRequest>, Reply<DeadLetterId>)>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(error) => {
            let error = error.to_string();
            for (_, reply) in group {
                let _ = reply.send(Err(QueueError::unavailable(error.clone())));
            }
            return;
        }
    };
    let results: Vec<_> = group
        .into_iter()
        .map(|(request, reply)| (insert(&tx, &request), reply))
        .collect();
    match tx.commit() {
        Ok(()) => {
            for (result, reply) in results {
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            let error = error.to_string();
            for (_, reply) in results {
                let _ = reply.send(Err(QueueError::unavailable(error.clone())));
            }
        }
    }
}
