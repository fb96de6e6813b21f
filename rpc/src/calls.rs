//! What both ends of `MigrateCalls` (many Migrate calls on one stream) agree on: how a
//! call's final status travels as a `MigrateCallEnd` and back, and how a call carries the
//! ASCII metadata (W3C trace context) a Migrate request would carry in its headers. Both
//! directions are written here once, so the coordinator sees the same status (code, message,
//! `flotilla-reason`) a Migrate stream would have ended with.

use std::collections::HashMap;

use flotilla_proto as pb;
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::reason::REASON_METADATA_KEY;

/// How a call ended. `refused`: the agent answered the Migrate with this error instead of a
/// stream (nothing ran; the unary call's own error), not as the stream's last item.
pub fn end_of(status: &Status, refused: bool) -> pb::MigrateCallEnd {
    pb::MigrateCallEnd {
        code: status.code() as i32,
        message: status.message().to_owned(),
        reason: status
            .metadata()
            .get(REASON_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        refused,
    }
}

/// The end of a call that succeeded.
pub fn end_ok() -> pb::MigrateCallEnd {
    pb::MigrateCallEnd::default()
}

/// The status a call's end stands for: `None` when it succeeded.
pub fn status_of(end: &pb::MigrateCallEnd) -> Option<Status> {
    let code = Code::from_i32(end.code);
    if code == Code::Ok {
        return None;
    }
    let mut status = Status::new(code, end.message.clone());
    if !end.reason.is_empty()
        && let Ok(v) = end.reason.parse()
    {
        status.metadata_mut().insert(REASON_METADATA_KEY, v);
    }
    Some(status)
}

/// The ASCII entries of `metadata`, for a call.
pub fn metadata_to_map(metadata: &MetadataMap) -> HashMap<String, String> {
    metadata
        .iter()
        .filter_map(|kv| match kv {
            KeyAndValueRef::Ascii(k, v) => {
                Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))
            }
            KeyAndValueRef::Binary(..) => None,
        })
        .collect()
}

/// A call's metadata back into request metadata; an entry that is not valid metadata is left
/// out (it could not have come from a header either).
pub fn map_to_metadata(map: &HashMap<String, String>, metadata: &mut MetadataMap) {
    for (k, v) in map {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(k.as_bytes()),
            MetadataValue::try_from(v.as_str()),
        ) {
            metadata.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_travels_with_its_code_message_and_reason() {
        let mut status = Status::failed_precondition("PLAN_STALE: the plan is stale");
        status
            .metadata_mut()
            .insert(REASON_METADATA_KEY, "PLAN_STALE".parse().unwrap());
        let end = end_of(&status, true);
        assert!(end.refused);
        let back = status_of(&end).expect("an error");
        assert_eq!(back.code(), Code::FailedPrecondition);
        assert_eq!(back.message(), "PLAN_STALE: the plan is stale");
        assert_eq!(
            crate::reason::Reason::of_status(&back),
            Some("PLAN_STALE"),
            "the reason metadata comes back"
        );
        assert!(status_of(&end_ok()).is_none(), "OK is no error");
        let plain = status_of(&end_of(&Status::unavailable("down"), false)).unwrap();
        assert_eq!(plain.code(), Code::Unavailable);
        assert!(plain.metadata().get(REASON_METADATA_KEY).is_none());
    }

    #[test]
    fn trace_context_metadata_survives_the_trip_and_binary_entries_stay_behind() {
        let mut md = MetadataMap::new();
        md.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        md.insert_bin("blob-bin", MetadataValue::from_bytes(b"\x00\x01"));
        let map = metadata_to_map(&md);
        assert_eq!(map.len(), 1);
        let mut back = MetadataMap::new();
        map_to_metadata(&map, &mut back);
        assert_eq!(
            back.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        let mut bad = HashMap::new();
        bad.insert("Bad Key".to_owned(), "v".to_owned());
        let mut none = MetadataMap::new();
        map_to_metadata(&bad, &mut none);
        assert!(none.is_empty());
    }
}
