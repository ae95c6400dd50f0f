//! The queue's Lua scripts, one `.lua` file each (what a script takes and
//! returns is at the top of its file). Every script is sent with the list
//! of an entry's fields and `prelude.lua` in front of it, after a `#!lua`
//! line (see `RedisStore`'s scripts).

use std::sync::LazyLock;

use ::redis::Script;

/// The fields of an entry's hash that make up a
/// [`DeadLetter`](crate::dead_letter::DeadLetter), in the order the scripts
/// and `HMGET` return them.
pub(super) const FIELDS: [&str; 15] = [
    "at",
    "method",
    "uri",
    "headers",
    "body",
    "not_kept",
    "key",
    "reason",
    "attempts",
    "last_status",
    "last_error",
    "state",
    "until",
    "status",
    "history",
];

/// The definitions every script starts with, and the key layout.
const PRELUDE: &str = include_str!("prelude.lua");

/// `take(id, state, until_ms)`, which both lease scripts share.
const TAKE: &str = include_str!("take.lua");

fn script(body: &str) -> Script {
    script_with("", body)
}

/// A script with shebang `flags`: `flags=no-writes` for one that only reads
/// (it then runs while Redis refuses writes), `flags=allow-oom` for one that
/// only deletes (it then runs at `maxmemory`, where it frees memory).
fn script_with(flags: &str, body: &str) -> Script {
    let fields: Vec<String> = FIELDS.iter().map(|f| format!("'{f}'")).collect();
    let shebang = if flags.is_empty() {
        "#!lua".to_owned()
    } else {
        format!("#!lua {flags}")
    };
    Script::new(&format!(
        "{shebang}\nlocal FIELDS = {{{}}}\n{PRELUDE}{body}",
        fields.join(", ")
    ))
}

pub(super) static PUSH: LazyLock<Script> = LazyLock::new(|| script(include_str!("push.lua")));
pub(super) static LEASE: LazyLock<Script> =
    LazyLock::new(|| script(&[TAKE, include_str!("lease.lua")].concat()));
pub(super) static LEASE_ONE: LazyLock<Script> =
    LazyLock::new(|| script(&[TAKE, include_str!("lease_one.lua")].concat()));
pub(super) static FINISH: LazyLock<Script> = LazyLock::new(|| script(include_str!("finish.lua")));
pub(super) static DISCARD: LazyLock<Script> = LazyLock::new(|| script(include_str!("discard.lua")));
pub(super) static PAGE: LazyLock<Script> =
    LazyLock::new(|| script_with("flags=no-writes", include_str!("page.lua")));
pub(super) static COUNTS: LazyLock<Script> =
    LazyLock::new(|| script_with("flags=no-writes", include_str!("counts.lua")));
pub(super) static PURGE: LazyLock<Script> =
    LazyLock::new(|| script_with("flags=allow-oom", include_str!("purge.lua")));
