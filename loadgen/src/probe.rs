//! Subscription probes: proof that every connection receives its user's messages before a
//! measurement starts. Some servers register a subscription only after the WebSocket handshake
//! (Pushpin does it asynchronously, after the 101), so "connected" is not "subscribed". loadgen
//! publishes `{"probe":1}` to every user whose connections have not all seen one yet, repeating
//! the round until each connection has received a probe or the time runs out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;

use crate::http::HttpConn;
use crate::target::{Item, Target};

/// The `data` of a probe message.
pub const PROBE_DATA: &str = "{\"probe\":1}";
/// How long one round waits for its probes before publishing the missing ones again.
const ROUND: Duration = Duration::from_millis(500);

/// Which connections have received a probe, per user.
#[derive(Debug)]
pub struct ProbeBoard {
    want: Vec<u64>,
    got: Vec<AtomicU64>,
    total_want: u64,
    total_got: AtomicU64,
}

impl ProbeBoard {
    /// A board for connections of users `0..users`; `user_index_of_each` lists the user index of
    /// every connection that must confirm.
    pub fn new(users: usize, user_index_of_each: impl IntoIterator<Item = u64>) -> Self {
        let mut want = vec![0u64; users];
        for index in user_index_of_each {
            if let Some(slot) = usize::try_from(index).ok().and_then(|i| want.get_mut(i)) {
                *slot += 1;
            }
        }
        Self {
            total_want: want.iter().sum(),
            got: want.iter().map(|_| AtomicU64::new(0)).collect(),
            want,
            total_got: AtomicU64::new(0),
        }
    }

    /// Records that one connection of user `user_index` received its first probe.
    pub fn confirm(&self, user_index: u64) {
        if let Some(slot) = usize::try_from(user_index)
            .ok()
            .and_then(|i| self.got.get(i))
        {
            slot.fetch_add(1, Ordering::Relaxed);
            self.total_got.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections confirmed so far.
    pub fn confirmed(&self) -> u64 {
        self.total_got.load(Ordering::Relaxed)
    }

    /// Users with a connection still waiting for a probe.
    fn pending_users(&self) -> Vec<usize> {
        (0..self.want.len())
            .filter(|&i| self.got[i].load(Ordering::Relaxed) < self.want[i])
            .collect()
    }
}

/// Publishes probes until every connection on `board` has confirmed; returns how long it took,
/// or fails after `timeout` (`user_ids[i]` is user index `i`).
pub async fn confirm_subscriptions(
    target: &Target,
    user_ids: &[String],
    board: &ProbeBoard,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let deadline = started + timeout;
    let chunk = target.protocol.probe_batch().max(1);
    let mut conn: Option<HttpConn> = None;
    let mut body = Vec::new();
    let mut last_error = None;
    while board.confirmed() < board.total_want {
        if Instant::now() >= deadline {
            bail!(
                "{} of {} connection(s) never received a subscription probe within {timeout:?}{}",
                board.total_want - board.confirmed(),
                board.total_want,
                last_error.map_or(String::new(), |error| format!(
                    " (last publish error: {error})"
                ))
            );
        }
        for users in board.pending_users().chunks(chunk) {
            if Instant::now() >= deadline {
                break;
            }
            let items: Vec<Item<'_>> = users
                .iter()
                .filter_map(|&i| user_ids.get(i))
                .map(|user_id| Item {
                    user_id,
                    data: PROBE_DATA,
                })
                .collect();
            body.clear();
            let path = target.protocol.publish(&items, &mut body);
            let mut live = match conn.take() {
                Some(open) if open.is_open() => open,
                _ => match HttpConn::connect(&target.api).await {
                    Ok(open) => open,
                    Err(error) => {
                        last_error = Some(format!("{error:#}"));
                        break;
                    }
                },
            };
            match live.post_json(&path, Bytes::copy_from_slice(&body)).await {
                Ok((status, _)) if status.is_success() => conn = Some(live),
                Ok((status, reply)) => {
                    last_error = Some(format!("{status}: {}", String::from_utf8_lossy(&reply)));
                    conn = Some(live);
                }
                Err(error) => last_error = Some(format!("{error:#}")),
            }
        }
        let round_end = (Instant::now() + ROUND).min(deadline);
        while board.confirmed() < board.total_want && Instant::now() < round_end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_tracks_pending_users() {
        let board = ProbeBoard::new(3, [0, 0, 1, 2]);
        assert_eq!(board.pending_users(), vec![0, 1, 2]);
        board.confirm(0);
        board.confirm(2);
        assert_eq!(board.pending_users(), vec![0, 1]);
        board.confirm(0);
        board.confirm(1);
        board.confirm(7);
        assert!(board.pending_users().is_empty());
        assert_eq!(board.confirmed(), 4);
    }
}
