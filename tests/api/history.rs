//! History and resume: replay of missed events, the resync notice, idempotent pushes, expiry by
//! size and age, offline storage, and the settings that govern them. Each test runs its own
//! server with real HTTP and WebSocket clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

use crate::helpers::{
    TestApp, Ws, assert_silent, drain_until_end, encode, epoch_of, next_json, spawn_app,
    test_settings,
};

/// How long a socket must stay quiet to count as having received nothing.
const QUIET: Duration = Duration::from_millis(200);

/// The resync reasons, as `/metrics` labels them.
const RESYNC_REASONS: [&str; 4] = [
    "unknown_event_id",
    "expired",
    "epoch_changed",
    "history_disabled",
];

#[tokio::test]
async fn a_reconnecting_client_gets_exactly_what_it_missed_in_order_then_live_events() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("rejoin").await;
    let mut seen = Vec::new();
    let mut epoch = String::new();
    for seq in 0..3 {
        let response = app
            .push(json!({"user_id": "rejoin", "data": {"seq": seq}}))
            .await;
        assert_eq!(response["status"], "success", "{response}");
        assert_eq!(response["stored"], true, "{response}");
        assert_eq!(response["position"], seq + 1, "{response}");
        epoch = epoch_of(&response);
        let frame = next_json(&mut ws).await;
        assert_eq!(frame["data"]["seq"], seq, "{frame}");
        seen.push(frame);
    }
    let last_seen = seen[2]["event_id"].as_str().unwrap().to_owned();
    disconnect(&app, ws).await;

    let mut missed = Vec::new();
    for seq in 3..13 {
        let response = app
            .push(json!({"user_id": "rejoin", "data": {"seq": seq}}))
            .await;
        assert_eq!(response["status"], "partial", "{response}");
        assert_eq!(response["delivered"], 0, "{response}");
        assert_eq!(response["stored"], true, "{response}");
        assert_eq!(response["duplicate"], false, "{response}");
        assert_eq!(
            response["epoch"], epoch,
            "one stream, one epoch: {response}"
        );
        assert_eq!(response["position"], seq + 1, "{response}");
        missed.push(response);
    }

    let mut back = app.resume("rejoin", &last_seen).await;
    for (n, response) in missed.iter().enumerate() {
        let frame = next_json(&mut back).await;
        assert_eq!(
            frame["event_type"], "message",
            "replayed frame {n}: {frame}"
        );
        assert_eq!(
            frame["event_id"], response["event_id"],
            "replayed frame {n}"
        );
        assert_eq!(frame["data"], json!({"seq": n + 3}), "replayed frame {n}");
        assert_eq!(frame["user_id"], "rejoin");
    }
    let live = app
        .push(json!({"user_id": "rejoin", "data": {"seq": 13}}))
        .await;
    assert_eq!(live["delivered"], 1, "{live}");
    let frame = next_json(&mut back).await;
    assert_eq!(
        frame["data"],
        json!({"seq": 13}),
        "the live event follows the replay"
    );
    assert_eq!(frame["event_id"], live["event_id"]);
    assert_silent(&mut back, QUIET).await;

    // The Last-Event-ID header works too, and beats the query parameter.
    let mut via_header = resume_with_header(&app, "rejoin", "no-such-id", &last_seen).await;
    for seq in 3..14 {
        let frame = next_json(&mut via_header).await;
        assert_eq!(frame["data"], json!({"seq": seq}), "{frame}");
    }
    assert_silent(&mut via_header, QUIET).await;

    let metrics = app.metrics().await;
    assert_eq!(metrics["resumes_replayed_total"], 2, "{metrics}");
    assert_eq!(metrics["events_replayed_total"], 10 + 11, "{metrics}");
    assert_no_resyncs(&metrics);
    assert_eq!(metrics["history_users"], 1, "{metrics}");
    assert_eq!(metrics["history_events"], 14, "{metrics}");
}

#[tokio::test]
async fn a_caught_up_client_resumes_with_nothing_replayed_and_no_resync() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("current").await;
    for seq in 0..3 {
        app.push(json!({"user_id": "current", "data": {"seq": seq}}))
            .await;
    }
    let mut last = Value::Null;
    for seq in 0..3 {
        last = next_json(&mut ws).await;
        assert_eq!(last["data"]["seq"], seq, "{last}");
    }
    disconnect(&app, ws).await;

    let mut back = app
        .resume("current", last["event_id"].as_str().unwrap())
        .await;
    assert_silent(&mut back, QUIET).await;
    let live = app
        .push(json!({"user_id": "current", "data": {"seq": 3}}))
        .await;
    assert_eq!(live["delivered"], 1, "{live}");
    assert_eq!(next_json(&mut back).await["data"], json!({"seq": 3}));

    let metrics = app.metrics().await;
    assert_eq!(metrics["resumes_replayed_total"], 1, "{metrics}");
    assert_eq!(metrics["events_replayed_total"], 0, "{metrics}");
    assert_no_resyncs(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_while_pushes_race_loses_nothing_and_repeats_nothing() {
    const USER: &str = "racer";
    const TOTAL: usize = 1000;
    const PUSHERS: usize = 4;
    /// The client drops its connection after reading this many events in all, and resumes.
    const RECONNECT_AFTER: [usize; 3] = [150, 400, 750];
    /// Pushes from this sequence number on wait until the client has resumed once, so that some
    /// pushes certainly follow a resume.
    const GATE: usize = 600;

    let app = spawn_app(&["--history-size", "1000", "--ws-send-queue", "4096"]).await;
    let test = async {
        let mut ws = app.connect(USER).await;
        let next_seq = Arc::new(AtomicUsize::new(0));
        let (resumed_tx, resumed_rx) = tokio::sync::watch::channel(false);
        let pushers: Vec<_> = (0..PUSHERS)
            .map(|_| {
                let http = app.http.clone();
                let url = app.url("/sse/push");
                let next_seq = Arc::clone(&next_seq);
                let mut resumed = resumed_rx.clone();
                tokio::spawn(async move {
                    let mut acks = Vec::new();
                    loop {
                        let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                        if seq >= TOTAL {
                            return acks;
                        }
                        if seq >= GATE {
                            resumed
                                .wait_for(|resumed| *resumed)
                                .await
                                .expect("the client resumes");
                        }
                        let body = json!({"user_id": USER, "data": {"seq": seq}});
                        let response = http.post(&url).json(&body).send().await.expect("push");
                        assert_eq!(response.status().as_u16(), 200, "push {seq}");
                        let response: Value = response.json().await.expect("JSON body");
                        assert_eq!(response["stored"], true, "push {seq}: {response}");
                        let position = response["position"].as_u64().expect("a position");
                        let event_id = response["event_id"].as_str().unwrap().to_owned();
                        acks.push((position, seq, event_id));
                    }
                })
            })
            .collect();

        // (seq, event_id) of every event the client read, across all its connections.
        let mut received: Vec<(u64, String)> = Vec::new();
        let mut pushes_done_at_resume = Vec::new();
        for (session, limit) in RECONNECT_AFTER.into_iter().chain([TOTAL]).enumerate() {
            while received.len() < limit {
                let frame = next_json(&mut ws).await;
                assert_eq!(
                    frame["event_type"],
                    "message",
                    "session {session}, after {} events: {frame}",
                    received.len()
                );
                let seq = frame["data"]["seq"].as_u64().expect("a sequence number");
                received.push((seq, frame["event_id"].as_str().unwrap().to_owned()));
            }
            if limit == TOTAL {
                break;
            }
            pushes_done_at_resume.push(next_seq.load(Ordering::Relaxed).min(TOTAL));
            let (_, last) = received.last().expect("read something").clone();
            // Leave without reading what is already in flight: abruptly, then politely, then
            // abruptly again; resume by query parameter and by header alternately.
            if session == 1 {
                ws.close(None).await.expect("close");
            }
            drop(ws);
            ws = if session == 1 {
                resume_with_header(&app, USER, "", &last).await
            } else {
                app.resume(USER, &last).await
            };
            resumed_tx.send_replace(true);
        }
        assert_silent(&mut ws, QUIET).await;

        let mut acks = Vec::new();
        for pusher in pushers {
            acks.extend(pusher.await.expect("pusher task"));
        }
        acks.sort();
        let positions: Vec<u64> = acks.iter().map(|(position, _, _)| *position).collect();
        assert_eq!(
            positions,
            (1..=TOTAL as u64).collect::<Vec<_>>(),
            "every push has its own position"
        );
        // The stream's order is the order of positions; the client must have seen exactly it.
        let expected: Vec<(u64, String)> = acks
            .into_iter()
            .map(|(_, seq, event_id)| (seq as u64, event_id))
            .collect();
        if received != expected {
            let first_difference = received
                .iter()
                .zip(&expected)
                .position(|(got, want)| got != want);
            panic!(
                "the client's sequence differs from the stream's at index {first_difference:?} \
                 (received {} events, expected {})",
                received.len(),
                expected.len()
            );
        }
        let mut seqs: Vec<u64> = received.iter().map(|(seq, _)| *seq).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..TOTAL as u64).collect::<Vec<_>>(),
            "no gap, no duplicate"
        );

        let metrics = app.metrics().await;
        assert_eq!(metrics["resumes_replayed_total"], 3, "{metrics}");
        assert_no_resyncs(&metrics);
        eprintln!(
            "pushes started at each resume: {pushes_done_at_resume:?}; events replayed: {}",
            metrics["events_replayed_total"]
        );
    };
    timeout(Duration::from_secs(30), test)
        .await
        .expect("the race test finishes within 30 s");
}

#[tokio::test]
async fn an_unknown_or_foreign_resume_point_gets_a_resync_notice_first_then_live_events() {
    let app = spawn_app(&[]).await;
    let mut stored = Vec::new();
    for seq in 0..2 {
        stored.push(
            app.push(json!({"user_id": "lost", "data": {"seq": seq}}))
                .await,
        );
    }
    let epoch = epoch_of(&stored[0]);

    let mut ws = app.resume("lost", "never-sent").await;
    let notice = next_json(&mut ws).await;
    assert_resync(&notice, "lost", "unknown_event_id", "never-sent", &epoch, 2);
    let live = app
        .push(json!({"user_id": "lost", "data": {"seq": 2}}))
        .await;
    assert_eq!(live["delivered"], 1, "{live}");
    let frame = next_json(&mut ws).await;
    assert_eq!(
        frame["data"],
        json!({"seq": 2}),
        "after the notice come live events only, not the stored ones"
    );
    assert_silent(&mut ws, QUIET).await;

    // A position token of another epoch, or beyond this stream's head, is not this stream's.
    let foreign = "01ARZ3NDEKTSV4RRFFQ69G5FAV:1".to_owned();
    let future = format!("{epoch}:99");
    for from in [&foreign, &future] {
        let mut ws = app.resume("lost", from).await;
        let notice = next_json(&mut ws).await;
        assert_resync(&notice, "lost", "epoch_changed", from, &epoch, 3);
        assert_silent(&mut ws, QUIET).await;
    }

    let metrics = app.metrics().await;
    assert_eq!(metrics["resyncs_total"]["unknown_event_id"], 1, "{metrics}");
    assert_eq!(metrics["resyncs_total"]["epoch_changed"], 2, "{metrics}");
    assert_eq!(metrics["resumes_replayed_total"], 0, "{metrics}");
}

/// After a restart (a new server: the memory broker's history is gone) an event id from before it
/// is one this server never issued (`unknown_event_id`: an id alone does not say which incarnation
/// of the stream it came from), while a position token names its epoch (`epoch_changed`), as
/// docs/protocol.md says.
#[tokio::test]
async fn after_a_restart_an_old_event_id_is_unknown_and_an_old_position_token_is_a_changed_epoch() {
    let before = spawn_app(&[]).await;
    let old = before
        .push(json!({"user_id": "reborn", "data": {"seq": 0}}))
        .await;
    let old_id = old["event_id"].as_str().unwrap().to_owned();
    let old_token = format!("{}:{}", epoch_of(&old), old["position"]);
    drop(before);

    let after = spawn_app(&[]).await;
    let new = after
        .push(json!({"user_id": "reborn", "data": {"seq": 1}}))
        .await;
    let epoch = epoch_of(&new);
    assert_ne!(epoch, epoch_of(&old), "a restarted stream has a new epoch");

    let mut ws = after.resume("reborn", &old_id).await;
    let notice = next_json(&mut ws).await;
    assert_resync(&notice, "reborn", "unknown_event_id", &old_id, &epoch, 1);
    let mut ws = after.resume("reborn", &old_token).await;
    let notice = next_json(&mut ws).await;
    assert_resync(&notice, "reborn", "epoch_changed", &old_token, &epoch, 1);
}

#[tokio::test]
async fn resume_points_pushed_out_by_history_size_resync() {
    let app = spawn_app(&["--history-size", "3"]).await;
    let mut responses = Vec::new();
    for seq in 0..10 {
        responses.push(
            app.push(json!({"user_id": "small", "data": {"seq": seq}}))
                .await,
        );
    }
    let epoch = epoch_of(&responses[0]);
    let id = |seq: usize| responses[seq]["event_id"].as_str().unwrap().to_owned();
    let metrics_now = app.metrics().await;
    assert_eq!(metrics_now["history_events"], 3, "{metrics_now}");

    let mut ws = app.resume("small", &id(0)).await;
    assert_resync(
        &next_json(&mut ws).await,
        "small",
        "unknown_event_id",
        &id(0),
        &epoch,
        10,
    );
    assert_silent(&mut ws, QUIET).await;

    let from_start = format!("{epoch}:0");
    let mut ws = app.resume("small", &from_start).await;
    assert_resync(
        &next_json(&mut ws).await,
        "small",
        "expired",
        &from_start,
        &epoch,
        10,
    );
    assert_silent(&mut ws, QUIET).await;

    // Still resumable: from a kept event, from the newest dropped one (everything after it is
    // kept), and from the position token just before the oldest kept event.
    let newest_dropped = id(6);
    let just_before_oldest = format!("{epoch}:7");
    for (from, first) in [(id(7), 8), (newest_dropped, 7), (just_before_oldest, 7)] {
        let mut ws = app.resume("small", &from).await;
        for seq in first..10 {
            let frame = next_json(&mut ws).await;
            assert_eq!(frame["data"], json!({"seq": seq}), "resuming from {from}");
        }
        assert_silent(&mut ws, QUIET).await;
    }

    let metrics = app.metrics().await;
    assert_eq!(metrics["resyncs_total"]["unknown_event_id"], 1, "{metrics}");
    assert_eq!(metrics["resyncs_total"]["expired"], 1, "{metrics}");
    assert_eq!(metrics["resumes_replayed_total"], 3, "{metrics}");
    assert_eq!(metrics["events_replayed_total"], 2 + 3 + 3, "{metrics}");
}

#[tokio::test]
async fn events_older_than_history_ttl_are_dropped_and_swept() {
    const TTL: Duration = Duration::from_millis(200);
    let app = spawn_app(&["--history-ttl", &TTL.as_secs_f64().to_string()]).await;
    let pushed_at = Instant::now();
    let mut responses = Vec::new();
    for seq in 0..3 {
        let response = app
            .push(json!({"user_id": "aging", "data": {"seq": seq}}))
            .await;
        assert_eq!(response["stored"], true, "{response}");
        responses.push(response);
    }
    let epoch = epoch_of(&responses[0]);
    let id = |seq: usize| responses[seq]["event_id"].as_str().unwrap().to_owned();

    app.wait_for_metrics("the sweeper to drop the expired events", |m| {
        m["history_events"] == 0
    })
    .await;
    assert!(
        pushed_at.elapsed() >= TTL,
        "events went after {:?}, before their TTL",
        pushed_at.elapsed()
    );
    let metrics_now = app.metrics().await;
    assert_eq!(
        metrics_now["history_users"], 1,
        "an idle stream keeps its place: {metrics_now}"
    );

    for old in [id(0), id(1)] {
        let mut ws = app.resume("aging", &old).await;
        assert_resync(
            &next_json(&mut ws).await,
            "aging",
            "unknown_event_id",
            &old,
            &epoch,
            3,
        );
    }
    let from_start = format!("{epoch}:0");
    let mut ws = app.resume("aging", &from_start).await;
    assert_resync(
        &next_json(&mut ws).await,
        "aging",
        "expired",
        &from_start,
        &epoch,
        3,
    );
    drop(ws);

    // A client that had seen the last event missed nothing: it resumes without a resync.
    let mut caught_up = app.resume("aging", &id(2)).await;
    assert_silent(&mut caught_up, QUIET).await;
    let live = app
        .push(json!({"user_id": "aging", "data": {"seq": 3}}))
        .await;
    assert_eq!(
        live["epoch"], epoch,
        "the stream survived its events: {live}"
    );
    assert_eq!(live["position"], 4, "{live}");
    assert_eq!(next_json(&mut caught_up).await["data"], json!({"seq": 3}));

    // An active stream also sheds events past the TTL when pushed to.
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    let newer = app
        .push(json!({"user_id": "aging", "data": {"seq": 4}}))
        .await;
    assert_eq!(newer["position"], 5, "{newer}");
    let metrics_now = app.metrics().await;
    assert_eq!(
        metrics_now["history_events"], 1,
        "only the fresh event: {metrics_now}"
    );

    let metrics = app.metrics().await;
    assert_eq!(metrics["resyncs_total"]["unknown_event_id"], 2, "{metrics}");
    assert_eq!(metrics["resyncs_total"]["expired"], 1, "{metrics}");
}

#[tokio::test]
async fn without_history_pushes_are_not_stored_resumes_resync_and_ids_are_not_deduplicated() {
    for flags in [["--history-size", "0"], ["--history-ttl", "0"]] {
        let app = spawn_app(&flags).await;
        let response = app
            .push(json!({"user_id": "plain", "data": {}, "event_id": "x-1"}))
            .await;
        assert_eq!(response["status"], "partial", "{flags:?}: {response}");
        assert_eq!(response["message"], "user not connected", "{flags:?}");
        assert_eq!(response["stored"], false, "{flags:?}: {response}");
        assert_eq!(response["duplicate"], false, "{flags:?}: {response}");
        assert!(
            response.get("epoch").is_none() && response.get("position").is_none(),
            "{flags:?}: no position without history: {response}"
        );

        let mut ws = app.resume("plain", "x-1").await;
        let notice = next_json(&mut ws).await;
        assert_eq!(notice["event_type"], "resync", "{flags:?}: {notice}");
        assert_eq!(
            notice["event_id"], "",
            "{flags:?}: no token to give: {notice}"
        );
        assert_eq!(notice["user_id"], "plain", "{notice}");
        assert!(notice["timestamp"].is_number(), "{notice}");
        assert_eq!(
            notice["data"],
            json!({"reason": "history_disabled", "last_event_id": "x-1", "epoch": null, "position": null}),
            "{flags:?}"
        );

        // Without history there is nothing to recognise a retry by: both copies are delivered.
        for _ in 0..2 {
            let retry = app
                .push(json!({"user_id": "plain", "data": {"n": 1}, "event_id": "x-2"}))
                .await;
            assert_eq!(retry["duplicate"], false, "{flags:?}: {retry}");
            assert_eq!(retry["delivered"], 1, "{flags:?}: {retry}");
            assert_eq!(next_json(&mut ws).await["event_id"], "x-2");
        }
        let batch = app
            .push_batch(json!([{"user_id": "plain", "data": {}, "event_id": "x-2"}]))
            .await;
        assert_eq!(batch[0]["stored"], false, "{flags:?}: {batch:?}");
        assert_eq!(batch[0]["duplicate"], false, "{flags:?}: {batch:?}");

        let metrics = app.metrics().await;
        assert_eq!(metrics["resyncs_total"]["history_disabled"], 1, "{metrics}");
        assert_eq!(metrics["history_users"], 0, "{metrics}");
        assert_eq!(metrics["history_events"], 0, "{metrics}");
        assert_eq!(metrics["duplicate_pushes_total"], 0, "{metrics}");
    }
}

#[tokio::test]
async fn the_resync_notices_event_id_is_a_resume_token() {
    let app = spawn_app(&[]).await;
    for seq in 0..2 {
        app.push(json!({"user_id": "token", "data": {"seq": seq}}))
            .await;
    }
    let mut ws = app.resume("token", "stale").await;
    let notice = next_json(&mut ws).await;
    assert_eq!(notice["data"]["reason"], "unknown_event_id", "{notice}");
    let token = notice["event_id"].as_str().unwrap().to_owned();
    disconnect(&app, ws).await;

    let mut later = Vec::new();
    for seq in 2..5 {
        later.push(
            app.push(json!({"user_id": "token", "data": {"seq": seq}}))
                .await,
        );
    }
    let mut back = app.resume("token", &token).await;
    for (n, response) in later.iter().enumerate() {
        let frame = next_json(&mut back).await;
        assert_eq!(frame["event_id"], response["event_id"], "{frame}");
        assert_eq!(frame["data"], json!({"seq": n + 2}), "{frame}");
    }
    assert_silent(&mut back, QUIET).await;
    disconnect(&app, back).await;

    // A user nobody has pushed to yet gets a token for the start of its new stream.
    let mut fresh = app.resume("newcomer", "whatever").await;
    let notice = next_json(&mut fresh).await;
    assert_eq!(notice["data"]["reason"], "unknown_event_id", "{notice}");
    assert_eq!(notice["data"]["position"], 0, "{notice}");
    let token = notice["event_id"].as_str().unwrap().to_owned();
    assert_eq!(
        token,
        format!("{}:0", notice["data"]["epoch"].as_str().unwrap())
    );
    disconnect(&app, fresh).await;
    let first = app
        .push(json!({"user_id": "newcomer", "data": {"hello": 1}}))
        .await;
    assert_eq!(
        format!("{}:0", first["epoch"].as_str().unwrap()),
        token,
        "the push joined the stream the notice described: {first}"
    );
    let mut back = app.resume("newcomer", &token).await;
    assert_eq!(next_json(&mut back).await["data"], json!({"hello": 1}));
    assert_silent(&mut back, QUIET).await;
}

#[tokio::test]
async fn a_retried_push_is_delivered_once_and_reports_the_original_outcome() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("idem").await;
    let body = json!({"user_id": "idem", "data": {"order": 7}, "event_id": "order-7"});
    let first = app.push(body.clone()).await;
    assert_eq!(first["status"], "success", "{first}");
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(first["delivered"], 1, "{first}");
    assert_eq!(next_json(&mut ws).await["event_id"], "order-7");

    let retry = app.push(body.clone()).await;
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["event_id"], "order-7", "{retry}");
    assert_eq!(retry["status"], "success", "the original's status: {retry}");
    assert_eq!(retry["delivered"], 1, "the original's delivery: {retry}");
    assert_eq!(retry["stored"], true, "{retry}");
    assert_eq!(retry["epoch"], first["epoch"], "{retry}");
    assert_eq!(retry["position"], first["position"], "{retry}");
    assert!(
        retry["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("duplicate")),
        "{retry}"
    );

    // The retry of the same id with another payload is still the same event.
    let changed = app
        .push(json!({"user_id": "idem", "data": {"order": 8}, "event_id": "order-7"}))
        .await;
    assert_eq!(changed["duplicate"], true, "{changed}");
    // Nothing reached the client a second time: the next frame is the next event.
    app.push(json!({"user_id": "idem", "data": {}, "event_id": "order-8"}))
        .await;
    assert_eq!(next_json(&mut ws).await["event_id"], "order-8");

    // The outcome is the original's even when nobody is connected any more.
    disconnect(&app, ws).await;
    let offline_retry = app.push(body).await;
    assert_eq!(offline_retry["duplicate"], true, "{offline_retry}");
    assert_eq!(offline_retry["delivered"], 1, "{offline_retry}");
    assert_eq!(offline_retry["status"], "success", "{offline_retry}");

    // And the other way round: first pushed offline, retried once a client is connected.
    let offline_body = json!({"user_id": "idem", "data": {}, "event_id": "order-9"});
    let original = app.push(offline_body.clone()).await;
    assert_eq!(original["status"], "partial", "{original}");
    let mut fresh = app.connect("idem").await;
    let retry = app.push(offline_body).await;
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["delivered"], 0, "{retry}");
    assert_eq!(retry["status"], "partial", "{retry}");
    assert_silent(&mut fresh, QUIET).await;

    // The same id for another user is another event; ids the server assigns never collide.
    let other = app
        .push(json!({"user_id": "someone-else", "data": {}, "event_id": "order-7"}))
        .await;
    assert_eq!(other["duplicate"], false, "{other}");
    for _ in 0..2 {
        let generated = app
            .push(json!({"user_id": "idem", "data": {"same": true}}))
            .await;
        assert_eq!(generated["duplicate"], false, "{generated}");
        assert_eq!(generated["delivered"], 1, "{generated}");
        assert_eq!(
            next_json(&mut fresh).await["event_id"],
            generated["event_id"]
        );
    }

    let metrics = app.metrics().await;
    assert_eq!(metrics["duplicate_pushes_total"], 4, "{metrics}");
    assert_eq!(
        metrics["events_accepted_total"], 6,
        "10 pushes, 4 of them duplicates: only new events count as accepted: {metrics}"
    );
}

#[tokio::test]
async fn duplicates_are_recognised_within_a_batch_and_across_single_and_batch_pushes() {
    let app = spawn_app(&[]).await;
    let mut ws = app.connect("bulk").await;

    let results = app
        .push_batch(json!([
            {"user_id": "bulk", "data": {"i": 0}, "event_id": "a"},
            {"user_id": "bulk", "data": {"i": 1}, "event_id": "b"},
            {"user_id": "bulk", "data": {"i": 2}, "event_id": "a"},
            {"user_id": "bulk", "data": {"i": 3}},
        ]))
        .await;
    let flags: Vec<(bool, bool)> = results
        .iter()
        .map(|r| (r["stored"] == true, r["duplicate"] == true))
        .collect();
    assert_eq!(
        flags,
        [(true, false), (true, false), (true, true), (true, false)],
        "{results:?}"
    );
    assert_eq!(results[2]["event_id"], "a");
    assert_eq!(
        results[2]["success"], true,
        "the original's outcome: {results:?}"
    );
    assert_eq!(results[2]["delivered"], 1, "{results:?}");
    for expected in [json!({"i": 0}), json!({"i": 1}), json!({"i": 3})] {
        assert_eq!(next_json(&mut ws).await["data"], expected);
    }
    assert_silent(&mut ws, QUIET).await;

    // Single, then in a batch; batch, then single.
    let single = app
        .push(json!({"user_id": "bulk", "data": {"i": 4}, "event_id": "c"}))
        .await;
    assert_eq!(single["duplicate"], false, "{single}");
    let results = app
        .push_batch(json!([
            {"user_id": "bulk", "data": {"i": 5}, "event_id": "c"},
            {"user_id": "bulk", "data": {"i": 6}, "event_id": "d"},
        ]))
        .await;
    assert_eq!(results[0]["duplicate"], true, "{results:?}");
    assert_eq!(results[1]["duplicate"], false, "{results:?}");
    let single = app
        .push(json!({"user_id": "bulk", "data": {"i": 7}, "event_id": "d"}))
        .await;
    assert_eq!(single["duplicate"], true, "{single}");
    for expected in [json!({"i": 4}), json!({"i": 6})] {
        assert_eq!(next_json(&mut ws).await["data"], expected);
    }
    assert_silent(&mut ws, QUIET).await;

    // A replay carries each event once too.
    let mut replay = app
        .resume("bulk", &format!("{}:0", epoch_of(&single)))
        .await;
    for i in [0, 1, 3, 4, 6] {
        assert_eq!(next_json(&mut replay).await["data"], json!({"i": i}));
    }
    assert_silent(&mut replay, QUIET).await;

    let metrics = app.metrics().await;
    assert_eq!(metrics["duplicate_pushes_total"], 3, "{metrics}");
    assert_eq!(metrics["history_events"], 5, "{metrics}");
}

#[tokio::test]
async fn pushes_to_an_offline_user_are_stored_for_a_resume_but_not_for_a_fresh_connection() {
    let app = spawn_app(&[]).await;
    let offline = app
        .push(json!({"user_id": "ghost", "data": {"early": true}}))
        .await;
    assert_eq!(offline["status"], "partial", "{offline}");
    assert_eq!(offline["delivered"], 0, "{offline}");
    assert_eq!(offline["stored"], true, "{offline}");
    assert_eq!(offline["duplicate"], false, "{offline}");
    assert_eq!(offline["position"], 1, "{offline}");
    let message = offline["message"].as_str().unwrap();
    assert!(
        message.starts_with("user not connected") && message.contains("history"),
        "{message}"
    );
    let epoch = epoch_of(&offline);

    let mut fresh = app.connect("ghost").await;
    assert_silent(&mut fresh, QUIET).await;
    let live = app
        .push(json!({"user_id": "ghost", "data": {"live": true}}))
        .await;
    assert_eq!(live["delivered"], 1, "{live}");
    assert_eq!(next_json(&mut fresh).await["data"], json!({"live": true}));

    let mut resumed = app.resume("ghost", &format!("{epoch}:0")).await;
    let first = next_json(&mut resumed).await;
    assert_eq!(first["event_id"], offline["event_id"], "{first}");
    assert_eq!(first["data"], json!({"early": true}));
    assert_eq!(next_json(&mut resumed).await["data"], json!({"live": true}));
    assert_silent(&mut resumed, QUIET).await;
    assert_silent(&mut fresh, Duration::ZERO).await;

    let metrics = app.metrics().await;
    assert_eq!(metrics["resumes_replayed_total"], 1, "{metrics}");
    assert_eq!(metrics["events_replayed_total"], 2, "{metrics}");
    assert_eq!(metrics["events_offline_total"], 1, "{metrics}");
    assert_eq!(metrics["history_events"], 2, "{metrics}");
}

#[tokio::test]
async fn a_websocket_that_asks_is_told_its_position_first_and_resumes_from_it_without_a_gap() {
    let app = spawn_app(&[]).await;
    let before = app
        .push(json!({"user_id": "early", "data": {"n": 0}}))
        .await;

    // A fresh connection that asks is told where its stream stands, before anything else.
    let mut first = app.upgraded("user_id=early&position=true", &[]).await;
    let position = next_json(&mut first).await;
    let head = format!("{}:{}", epoch_of(&before), before["position"]);
    assert_eq!(
        position,
        json!({"event_type": "position", "event_id": head, "user_id": "early"}),
    );
    // It drops before its first event; what was pushed meanwhile comes on the resume from there.
    drop(first);
    app.wait_for_connections(0).await;
    let missed = app
        .push(json!({"user_id": "early", "data": {"n": 1}}))
        .await;
    let mut resumed = app.resume("early", &head).await;
    let replayed = next_json(&mut resumed).await;
    assert_eq!(replayed["event_id"], missed["event_id"], "{replayed}");
    assert_silent(&mut resumed, QUIET).await;

    // A resuming connection, and one that does not ask, get no position frame.
    let mut asked_while_resuming = app
        .upgraded(
            &format!("user_id=early&position=true&last_event_id={head}"),
            &[],
        )
        .await;
    assert_eq!(
        next_json(&mut asked_while_resuming).await["event_id"],
        missed["event_id"]
    );
    assert_silent(&mut asked_while_resuming, QUIET).await;
    let mut plain = app.connect("early").await;
    assert_silent(&mut plain, QUIET).await;

    // Without history there is no position to tell.
    let forgetful = spawn_app(&["--history-size", "0"]).await;
    let mut nothing = forgetful.upgraded("user_id=early&position=true", &[]).await;
    assert_silent(&mut nothing, QUIET).await;

    let refused = app.refused("user_id=early&position=yes", &[]).await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.json()["detail"][0]["loc"],
        json!(["query", "position"])
    );
}

#[tokio::test]
async fn a_send_queue_no_larger_than_the_history_is_refused_at_start_up_only_in_a_cluster() {
    let settings = test_settings;
    let cluster = [
        "--broker",
        "redis",
        "--history-size",
        "100",
        "--ws-send-queue",
        "100",
    ];
    let problem = settings(&cluster)
        .check_consistency()
        .expect_err("an inconsistent queue size");
    assert!(
        problem.contains("WS_SEND_QUEUE") && problem.contains("HISTORY_SIZE"),
        "{problem}"
    );
    // The memory broker feeds replays from history as connections drain: any history size.
    for fine in [
        &["--history-size", "2000"][..],
        &["--history-size", "100", "--ws-send-queue", "50"],
        &[
            "--broker",
            "redis",
            "--history-size",
            "100",
            "--ws-send-queue",
            "101",
        ],
    ] {
        let result = settings(fine).check_consistency();
        assert!(result.is_ok(), "{fine:?}: {result:?}");
    }
}

#[tokio::test]
async fn history_max_users_bounds_the_number_of_streams() {
    let app = spawn_app(&["--history-max-users", "3"]).await;
    for n in 0..20 {
        let response = app
            .push(json!({"user_id": format!("many-{n}"), "data": {}}))
            .await;
        assert_eq!(response["stored"], true, "{response}");
        let metrics = app.metrics().await;
        let expected = (n + 1).min(3);
        assert_eq!(
            metrics["history_users"], expected,
            "after push {n}: {metrics}"
        );
        assert_eq!(
            metrics["history_events"], expected,
            "after push {n}: {metrics}"
        );
    }
}

/// At the user cap, a push to a new user evicts another user's history, never the stream it has
/// just created (even when that stream is alone in its shard), so the epoch and position in the
/// response stay valid.
#[tokio::test]
async fn at_history_max_users_the_stream_just_pushed_to_is_kept() {
    let app = spawn_app(&["--history-max-users", "1"]).await;
    for n in 0..20 {
        let user = format!("capped-{n}");
        let response = app.push(json!({"user_id": user, "data": {"n": n}})).await;
        assert_eq!(response["stored"], true, "{response}");
        let metrics_now = app.metrics().await;
        assert_eq!(metrics_now["history_users"], 1, "push {n}: {metrics_now}");
        // The stream just pushed to is the least idle one: it must be the one kept.
        let from = format!("{}:0", epoch_of(&response));
        let mut ws = app.resume(&user, &from).await;
        let frame = next_json(&mut ws).await;
        assert_eq!(
            frame["data"],
            json!({"n": n}),
            "{user}'s fresh stream was evicted in favour of an idler one: {frame}"
        );
        disconnect(&app, ws).await;
    }
}

// Helpers for this module.

/// Asserts that every resync counter is zero.
fn assert_no_resyncs(metrics: &Value) {
    for reason in RESYNC_REASONS {
        assert_eq!(metrics["resyncs_total"][reason], 0, "{reason}: {metrics}");
    }
}

/// Asserts a resync notice's whole shape.
fn assert_resync(
    notice: &Value,
    user: &str,
    reason: &str,
    requested: &str,
    epoch: &str,
    position: u64,
) {
    assert_eq!(notice["event_type"], "resync", "{notice}");
    assert_eq!(
        notice["event_id"],
        format!("{epoch}:{position}"),
        "the head token: {notice}"
    );
    assert_eq!(notice["user_id"], user, "{notice}");
    assert!(notice["timestamp"].is_number(), "{notice}");
    assert_eq!(
        notice["data"],
        json!({"reason": reason, "last_event_id": requested, "epoch": epoch, "position": position}),
        "{notice}"
    );
}

/// Connects as `user` with a `Last-Event-ID` header of `from`, and `query_from` as the query
/// parameter (empty: none).
async fn resume_with_header(app: &TestApp, user: &str, query_from: &str, from: &str) -> Ws {
    let mut query = format!("user_id={}", encode(user));
    if !query_from.is_empty() {
        query.push_str(&format!("&last_event_id={}", encode(query_from)));
    }
    app.upgraded(&query, &[("last-event-id", from)]).await
}

/// Closes `ws` and waits until the server has unregistered every connection.
async fn disconnect(app: &TestApp, mut ws: Ws) {
    ws.close(None).await.expect("close");
    drain_until_end(&mut ws).await;
    app.wait_for_metrics("every connection to be unregistered", |m| {
        m["active_connections"] == 0
    })
    .await;
}
