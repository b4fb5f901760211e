//! Calls: SIP dialogs and the media they announced, the index that ties
//! streams to them, detection, the records people read, and the [`Engine`]
//! that owns all of it (one owner, fed by the agent's tasks or a capture).

mod dialogs;

pub mod correlate;
pub mod detect;
pub mod engine;
pub mod quality;
pub mod records;
pub mod streams;

pub use dialogs::{
    Call, CallDirection, CallEnd, CallState, CallTracker, MediaEndpoint, Side,
    DEFAULT_MAX_DIALOG_AGE_S, MAX_ANNOUNCED, MAX_DIALOGS, UNANSWERED_MAX_AGE_S,
};
pub use engine::Engine;

/// Hash maps and sets of the engine's hot paths: foldhash is several times
/// faster than SipHash on flow keys and Call-IDs, and still seeded per
/// process, so crafted keys cannot be aimed at one bucket in advance.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
