//! Arbitrary bytes as a push body: `parse_push`, `parse_push_targets` (`user_ids`),
//! `parse_broadcast`, and `parse_batch(bytes, 1000)`.
//!
//! Beyond "no panic", every accepted push must encode into a frame that is valid JSON with exactly
//! the contract's five fields, echoing the validated `user_id`, `event_type`, `event_id` and the
//! `data` object byte for byte; refusals must carry at least one issue located under `body`; and a
//! single push wrapped in `[…]` must be accepted by `parse_batch` exactly when `parse_push` accepts
//! it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;
use websocket_sse_server::protocol::{
    DEFAULT_EVENT_TYPE, EVENT_ID_MAX_CHARS, EVENT_TYPE_MAX_CHARS, IdOrigin, Issue, Loc, Push,
    PushMessage, USER_ID_MAX_BYTES, UserId, parse_batch, parse_broadcast, parse_push,
    parse_push_targets,
};

/// Most items a batch may hold here (the server's default `MAX_BATCH_SIZE`).
const MAX_ITEMS: usize = 1000;

/// The frame as clients read it. Raw values parse without recursion, so a deeply nested `data`
/// is checked for validity without hitting serde_json's depth limit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame<'a> {
    event_type: String,
    event_id: String,
    user_id: String,
    #[serde(borrow)]
    timestamp: &'a RawValue,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn no_control(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// Checks one accepted push and its encoding; returns the frame's fields other than the assigned
/// parts (a generated `event_id`) for comparisons between the single and batch paths.
fn check_accepted(message: &PushMessage<'_>) -> (String, String, Option<String>, String) {
    let user = message.user_id.as_str();
    assert!(
        !user.is_empty() && user.len() <= USER_ID_MAX_BYTES,
        "{user:?}"
    );
    assert!(no_control(user), "{user:?}");
    let chars = message.event_type.chars().count();
    assert!((1..=EVENT_TYPE_MAX_CHARS).contains(&chars));
    assert!(no_control(&message.event_type));
    if let Some(id) = &message.event_id {
        assert!((1..=EVENT_ID_MAX_CHARS).contains(&id.chars().count()));
        assert!(no_control(id));
    }
    assert!(message.data.get().starts_with('{'));

    let event = message
        .encode(0.0)
        .unwrap_or_else(|e| panic!("a validated push must encode: {e}"));
    let text = event.event.frame.to_string();
    let text = text.as_str();
    let frame: Frame<'_> = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("encoded frame is not the contract's JSON ({e}): {text}"));
    assert_eq!(frame.user_id, user);
    assert_eq!(frame.event_type, message.event_type);
    assert_eq!(&*event.event.event_type, &*message.event_type);
    assert_eq!(frame.event_id, &**event.event_id());
    match &message.event_id {
        Some(id) => {
            assert_eq!(frame.event_id, id.as_ref());
            assert_eq!(event.id_origin, IdOrigin::Upstream);
        }
        None => {
            assert_eq!(frame.event_id.len(), 26, "an assigned ULID");
            assert_eq!(event.id_origin, IdOrigin::Assigned);
        }
    }
    assert_eq!(
        frame.data.get(),
        message.data.get(),
        "data is kept byte for byte"
    );
    match message.timestamp {
        Some(raw) => assert_eq!(frame.timestamp.get(), raw.get()),
        None => assert_eq!(frame.timestamp.get(), "0.0"),
    }
    if message.event_type == DEFAULT_EVENT_TYPE {
        assert_eq!(&*event.event.event_type, DEFAULT_EVENT_TYPE);
    }
    (
        frame.user_id,
        frame.event_type,
        message.event_id.as_ref().map(|id| id.to_string()),
        frame.data.get().to_owned(),
    )
}

fn check_refused(issues: &[Issue]) {
    assert!(!issues.is_empty(), "a refusal names at least one problem");
    for issue in issues {
        assert_eq!(issue.loc.first(), Some(&Loc::Key("body")), "{issue:?}");
        assert!(!issue.kind.is_empty() && !issue.msg.is_empty(), "{issue:?}");
    }
    // The 422 body must serialize.
    serde_json::to_string(issues).expect("issues serialize");
}

fuzz_target!(|body: &[u8]| {
    let single = match parse_push(body) {
        Ok(message) => Some(check_accepted(&message)),
        Err(issues) => {
            check_refused(&issues);
            None
        }
    };

    match parse_batch(body, MAX_ITEMS) {
        Ok(messages) => {
            assert!(messages.len() <= MAX_ITEMS);
            for message in &messages {
                check_accepted(message);
            }
        }
        Err(issues) => {
            check_refused(&issues);
            for issue in &issues {
                if let Some(Loc::Index(index)) = issue.loc.get(1) {
                    assert!(*index < MAX_ITEMS, "{issue:?}");
                }
            }
        }
    }

    // The same push sent as a batch of one is accepted exactly when it is accepted alone, and
    // yields the same event.
    let mut wrapped = Vec::with_capacity(body.len() + 2);
    wrapped.push(b'[');
    wrapped.extend_from_slice(body);
    wrapped.push(b']');
    let as_batch = parse_batch(&wrapped, MAX_ITEMS);
    match (&single, &as_batch) {
        (Some(single), Ok(messages)) if messages.len() == 1 => {
            assert_eq!(single, &check_accepted(&messages[0]));
        }
        (None, Ok(messages)) if messages.len() == 1 => {
            panic!("refused alone but accepted as a batch of one")
        }
        (Some(_), Err(issues)) => {
            panic!("accepted alone but refused as a batch of one: {issues:?}")
        }
        // `{…},{…}` is no push but a valid batch of two: nothing to compare.
        (None, _) => {}
        (Some(_), Ok(messages)) => panic!("one push became {} batch items", messages.len()),
    }

    // The single-push endpoint: one user as `parse_push` has it, or up to MAX_ITEMS distinct users.
    match parse_push_targets(body, MAX_ITEMS) {
        Ok(Push::One(message)) => assert_eq!(single, Some(check_accepted(&message))),
        Ok(Push::Many(fields, users)) => {
            assert!((1..=MAX_ITEMS).contains(&users.len()));
            let mut names: Vec<&str> = users.iter().map(UserId::as_str).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), users.len(), "duplicates are dropped");
            let (event_id, events) = fields
                .encode_for(users.clone(), 0.0)
                .unwrap_or_else(|e| panic!("a validated push must encode: {e}"));
            for (user, event) in users.into_iter().zip(&events) {
                let mut alone = fields.clone().addressed_to(user);
                check_accepted(&alone);
                // Each user's frame is exactly what a push to that user alone encodes.
                alone.event_id = Some(event_id.to_string().into());
                let expected = alone.encode(0.0).expect("encodes").event.frame.to_string();
                assert_eq!(event.event.frame.to_string(), expected);
            }
        }
        Err(issues) => check_refused(&issues),
    }
    match parse_broadcast(body) {
        Ok(fields) => {
            let user = UserId::parse("fuzz").expect("a valid user id");
            check_accepted(&fields.addressed_to(user));
        }
        Err(issues) => check_refused(&issues),
    }
});
