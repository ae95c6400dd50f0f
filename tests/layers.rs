//! Every import points down. The crate's top-level modules ("rooms") sit on
//! floors, and a room may use only itself and rooms on lower floors, so the
//! modules form no cycle and each floor builds on the ones below it.
//!
//! The compiler accepts any import between modules of one crate, so this test
//! reads the source itself: every `crate::` and `super::` path under `src/`
//! (in `use` declarations and inline in code and types, comments and string
//! literals skipped), resolved to the room it names. It has no dependencies
//! and runs no compiler: a small lexer is enough for paths.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The rooms, bottom floor first. A room may import from itself (its own
/// sub-modules use each other freely) and from any room on a lower floor;
/// never from a room on its own floor or above. Two rooms on one floor stay
/// independent, so either can move, split or go away without the other.
///
/// A new top-level module fails the test until it is declared here: put it
/// on the lowest floor above every room it imports.
const LAYERS: &[&[&str]] = &[
    // 0, foundation: the shared errors, time, and the idempotency key with
    // its header; nothing here imports another room.
    &["error", "time", "key"],
    // 1, foundation: the request abstraction (and the replay body), the
    // per-host map, the window counter and the Redis connection.
    &["request", "hosts", "window", "redis_conn"],
    // 2: judging answers, and the waits between attempts.
    &["classify", "backoff"],
    // 3: retry budgets, and the spans and metrics every layer reports to.
    &["budget", "telemetry"],
    // 4: the circuit breaker, and the exactly-once core (stores, records,
    // the claim path).
    &["circuit", "store"],
    // 5: server-side idempotency and `Once` on the core, and the client's keys.
    &["idempotency", "once", "idempotency_key"],
    // 6: the retry layer (reconciliation and the give-up sink live inside
    // it), and hedging, which sits below it in a stack but needs nothing of it.
    &["retry", "hedge"],
    // 7: dead letters, attached to the retry layer through its give-up sink.
    &["dead_letter"],
    // 8: the conformance suites (feature `conformance`), run against the
    // stores and queues of every floor below.
    &["conformance"],
];

/// Top-level modules in no room: `fuzzing` is a hook compiled only under
/// `cfg(fuzzing)`, reaching into any room for the fuzz targets. Its files are
/// not checked, and no room may import it (a normal build has no such module).
const EXEMPT: &[&str] = &["fuzzing"];

#[test]
fn every_import_points_to_a_lower_floor_or_the_same_room() {
    let floors = floors();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let krate = Crate::new(&read(&src.join("lib.rs")), top_level_on_disk(&src));

    let mut undeclared = Vec::new();
    for module in &krate.modules {
        if !floors.contains_key(module.as_str()) && !EXEMPT.contains(&module.as_str()) {
            undeclared.push(format!("declare room `{module}` in LAYERS"));
        }
    }

    let mut violations = Vec::new();
    let mut paths_read = 0;
    for file in rust_files(&src) {
        let module = module_path(file.strip_prefix(&src).unwrap());
        // `lib.rs` (the empty module path) wires the rooms together: exempt.
        let Some(room) = module.first() else { continue };
        if EXEMPT.contains(&room.as_str()) {
            continue;
        }
        let shown_file = file.strip_prefix(root).unwrap().display().to_string();
        for import in imports(&read(&file), &module) {
            paths_read += 1;
            let shown = format!("crate::{}", import.path.join("::"));
            let target = match krate.target(&import.path) {
                Target::Root => continue,
                Target::Room(target) if target == *room => continue,
                Target::Room(target) => target,
                Target::Unknown => {
                    // Failing here, rather than skipping, keeps a path the
                    // reader cannot place from passing unseen.
                    violations.push(format!(
                        "{shown_file}:{}: {room} ({}) imports {shown}, which names no \
                         top-level module and nothing src/lib.rs defines or imports",
                        import.line,
                        floor_of(&floors, room),
                    ));
                    continue;
                }
            };
            let points_down = matches!(
                (floors.get(room.as_str()), floors.get(target.as_str())),
                (Some(from), Some(to)) if to < from
            );
            if !points_down {
                violations.push(format!(
                    "{shown_file}:{}: {room} ({}) imports {shown} from {target} ({})",
                    import.line,
                    floor_of(&floors, room),
                    floor_of(&floors, &target),
                ));
            }
        }
    }

    // A reader broken by some new syntax would see nothing and pass.
    assert!(
        paths_read > 0,
        "no crate:: or super:: path found under {}",
        src.display()
    );
    for line in undeclared.iter().chain(&violations) {
        eprintln!("{line}");
    }
    // The count, and the rooms to declare again: a short message that says
    // what to do even where the list above is cut off.
    let mut summary = format!(
        "imports that do not point down: {}; rooms missing from LAYERS: {} (all listed above)",
        violations.len(),
        undeclared.len(),
    );
    for line in &undeclared {
        summary.push('\n');
        summary.push_str(line);
    }
    assert!(undeclared.is_empty() && violations.is_empty(), "{summary}");
}

/// The reader on small sources, so that the test above cannot pass by
/// seeing nothing: each form of path it must find, and each it must skip.
#[test]
fn import_reader_finds_every_crate_path_and_only_those() {
    let lib = r"
        pub mod retry;
        pub mod classify;
        mod time;
        pub use retry::{
            Attempts,
            layer::{RetryLayer as Layer, Unused},
        };
        pub use crate::classify::Verdict;
        pub use http::Method;
        pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
        mod tests {
            use super::retry::Hidden;
        }
    ";
    let krate = Crate::new(lib, BTreeSet::from(["backoff".to_string()]));
    let target = |path: &str| krate.target(&path.split("::").map(String::from).collect::<Vec<_>>());
    let room = |name: &str| Target::Room(name.to_string());
    // Re-exports, grouped, nested, renamed and through `crate::`.
    assert_eq!(target("Attempts"), room("retry"));
    assert_eq!(target("Layer::new"), room("retry"));
    assert_eq!(target("Unused"), room("retry"));
    assert_eq!(target("Verdict"), room("classify"));
    assert_eq!(target("RetryLayer"), Target::Unknown, "renamed away");
    // Modules, declared in lib.rs or only found on disk.
    assert_eq!(target("time::after"), room("time"));
    assert_eq!(target("backoff::Backoff"), room("backoff"));
    // The root's own items and other crates' re-exported there: no room.
    assert_eq!(target("BoxError"), Target::Root);
    assert_eq!(target("Method"), Target::Root);
    // Only lib.rs's own `use` lines re-export, not those of inline modules.
    assert_eq!(target("Hidden"), Target::Unknown);

    let file = r##"//! use crate::doc::Comment;
use std::fmt;
pub(crate) use crate::{
    classify::{Outcome, RequestView},
    retry::{self, GiveUpReason as Reason},
};
pub use super::sibling::Thing;
use self::inner::Local;
/// Calls `crate::doc::example()`.
fn f(x: Option<crate::time::Instant>) -> &'static str {
    // crate::line::comment();
    /* crate::block::comment(); /* crate::nested */ crate::still::comment */
    let (quote, apostrophe) = ('"', '\'');
    crate::time::after(x);
    let _ = <crate::Layer as Clone>::clone;
    ("crate::string", r#"crate::raw "string""#, b"crate::bytes", 'c');
    crate::BoxError::from("x")
}
#[cfg(test)]
mod tests {
    use super::*;
    use super::super::{
        Up,
    };
}
macro_rules! m { () => { $crate::macro_path::X }; }
fn g() -> impl Sized + use<> {}
use crate::after::Macro;
"##;
    let found: Vec<(usize, String)> = imports(file, &module_path(Path::new("retry/future.rs")))
        .into_iter()
        .map(|import| (import.line, format!("crate::{}", import.path.join("::"))))
        .collect();
    let expected = [
        (4, "crate::classify::Outcome"),
        (4, "crate::classify::RequestView"),
        (5, "crate::retry"),
        (5, "crate::retry::GiveUpReason"),
        (7, "crate::retry::sibling::Thing"),
        (10, "crate::time::Instant"),
        (14, "crate::time::after"),
        (15, "crate::Layer"),
        (17, "crate::BoxError::from"),
        (21, "crate::retry::future::*"),
        (23, "crate::retry::Up"),
        (28, "crate::after::Macro"),
    ];
    let expected: Vec<(usize, String)> = expected
        .iter()
        .map(|(line, path)| (*line, path.to_string()))
        .collect();
    assert_eq!(found, expected);
    assert_eq!(target("Layer"), room("retry"));

    // `super` from a `mod.rs` leaves its folder's module; from lib.rs's
    // children it reaches the root.
    assert_eq!(module_path(Path::new("lib.rs")), Vec::<String>::new());
    assert_eq!(module_path(Path::new("retry/mod.rs")), ["retry"]);
    assert_eq!(
        module_path(Path::new("dead_letter/admin/api.rs")),
        ["dead_letter", "admin", "api"]
    );
    let paths = |src: &str, file: &str| -> Vec<String> {
        imports(src, &module_path(Path::new(file)))
            .into_iter()
            .map(|import| import.path.join("::"))
            .collect()
    };
    assert_eq!(paths("use super::Attempts;", "retry/mod.rs"), ["Attempts"]);
    assert_eq!(
        paths("use super::Done;", "dead_letter/admin/html.rs"),
        ["dead_letter::admin::Done"]
    );
    assert_eq!(
        paths("use super::Done;", "dead_letter/admin/mod.rs"),
        ["dead_letter::Done"]
    );
}

/// Each declared room and its floor. Panics on a room declared twice, since
/// it would have two floors.
fn floors() -> BTreeMap<&'static str, usize> {
    let mut floors = BTreeMap::new();
    for (floor, rooms) in LAYERS.iter().enumerate() {
        for room in *rooms {
            let before = floors.insert(*room, floor);
            assert!(
                before.is_none(),
                "room `{room}` is declared twice in LAYERS"
            );
        }
    }
    floors
}

fn floor_of(floors: &BTreeMap<&str, usize>, room: &str) -> String {
    match floors.get(room) {
        Some(floor) => format!("floor {floor}"),
        None if EXEMPT.contains(&room) => "exempt".to_string(),
        None => "undeclared".to_string(),
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, sorted so the report reads in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level modules found as `src/x.rs` or `src/x/`, so that a module
/// is a room even before lib.rs declares it. A folder with no Rust in it
/// (Markdown for `include_str!`) is no module.
fn top_level_on_disk(src: &Path) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for entry in fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !rust_files(&path).is_empty() {
                modules.insert(name);
            }
        } else if let Some(stem) = name
            .strip_suffix(".rs")
            .filter(|stem| *stem != "lib" && *stem != "main")
        {
            modules.insert(stem.to_string());
        }
    }
    modules
}

/// The module a file under `src/` defines: `a/b.rs` and `a/b/mod.rs` are
/// `a::b`, `lib.rs` is the root (empty).
fn module_path(relative: &Path) -> Vec<String> {
    let mut path: Vec<String> = relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(last) = path.last_mut() {
        *last = last.trim_end_matches(".rs").to_string();
    }
    if path.last().is_some_and(|last| last == "mod") || path == ["lib"] {
        path.pop();
    }
    path
}

/// What the crate root offers, read from lib.rs: its modules, the names it
/// re-exports from them, and the names that belong to no room.
struct Crate {
    /// Top-level modules: declared in lib.rs or found on disk.
    modules: BTreeSet<String>,
    /// A name lib.rs imports from a module (`RetryLayer`) to that module.
    reexports: BTreeMap<String, String>,
    /// Names lib.rs defines (`BoxError`) or imports from other crates. They
    /// are in no room, so any room may use them.
    root_items: BTreeSet<String>,
}

/// Where a path after `crate::` leads.
#[derive(Debug, PartialEq)]
enum Target {
    Room(String),
    Root,
    Unknown,
}

impl Crate {
    fn new(lib: &str, on_disk: BTreeSet<String>) -> Crate {
        let tokens = lex(lib);
        let mut modules = on_disk;
        let mut root_items = BTreeSet::new();
        let mut depth = 0;
        for (i, token) in tokens.iter().enumerate() {
            match &token.tok {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => depth -= 1,
                // `mod x;` only: an inline `mod tests { .. }` is part of the root.
                Tok::Ident(word)
                    if depth == 0
                        && word == "mod"
                        && tokens.get(i + 2).map(|t| &t.tok) == Some(&Tok::Punct(';')) =>
                {
                    if let Some(Tok::Ident(name)) = tokens.get(i + 1).map(|t| &t.tok) {
                        modules.insert(name.clone());
                    }
                }
                Tok::Ident(word) if depth == 0 => {
                    let next = match tokens.get(i + 1).map(|t| &t.tok) {
                        Some(Tok::Ident(next)) => next,
                        // `macro_rules! name`
                        Some(Tok::Punct('!')) if word == "macro_rules" => {
                            match tokens.get(i + 2).map(|t| &t.tok) {
                                Some(Tok::Ident(name)) => name,
                                _ => continue,
                            }
                        }
                        _ => continue,
                    };
                    match word.as_str() {
                        "type" | "struct" | "enum" | "union" | "trait" | "fn" | "const"
                        | "static" | "macro_rules"
                            if !matches!(next.as_str(), "fn" | "mut" | "unsafe" | "async") =>
                        {
                            root_items.insert(next.clone());
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        // Second pass, once every module is known: what lib.rs's own `use`
        // lines bring into the root (not those of its inline modules).
        let mut reexports = BTreeMap::new();
        for found in find_paths(lib) {
            if !found.in_use || found.depth > 0 {
                continue;
            }
            let mut path: &[String] = &found.path;
            if path
                .first()
                .is_some_and(|first| first == "crate" || first == "self")
            {
                path = &path[1..];
            }
            let name = match (&found.alias, path) {
                (Some(alias), _) => alias,
                (None, [.., module, last]) if last == "self" => module,
                (None, [.., last]) => last,
                (None, []) => continue,
            };
            // `use Trait as _` names nothing; a glob (`pub use x::*`) cannot
            // be mapped here, so its names come out unknown and fail loudly.
            if name == "_" || name == "*" {
                continue;
            }
            match path.first() {
                Some(module) if modules.contains(module) => {
                    reexports.insert(name.clone(), module.clone());
                }
                _ => {
                    root_items.insert(name.clone());
                }
            }
        }
        Crate {
            modules,
            reexports,
            root_items,
        }
    }

    /// The room of `crate::{path}`: a module's own, the module lib.rs
    /// re-exports the name from, or none for the root's own items.
    fn target(&self, path: &[String]) -> Target {
        let Some(first) = path.first() else {
            return Target::Unknown;
        };
        if self.modules.contains(first) {
            Target::Room(first.clone())
        } else if let Some(module) = self.reexports.get(first) {
            Target::Room(module.clone())
        } else if self.root_items.contains(first) {
            Target::Root
        } else {
            Target::Unknown
        }
    }
}

/// A `crate::` or `super::` path of a file, made absolute: `path` is what
/// follows `crate::`.
#[derive(Debug)]
struct Import {
    line: usize,
    path: Vec<String>,
}

/// The `crate::` and `super::` paths of a file that defines module `module`,
/// with `super` resolved against it (and against the inline modules it sits
/// in, such as `mod tests`). `self::` paths stay in their module: skipped.
fn imports(src: &str, module: &[String]) -> Vec<Import> {
    let mut imports = Vec::new();
    for found in find_paths(src) {
        let mut path = match found.path.first().map(String::as_str) {
            Some("crate") => found.path[1..].to_vec(),
            Some("super") => {
                let mut base: Vec<String> = module.iter().chain(&found.module).cloned().collect();
                let supers = found.path.iter().take_while(|seg| *seg == "super").count();
                if supers > base.len() {
                    // Above the root: the compiler refuses it; keep it as
                    // written so that it is reported, unknown.
                    found.path.clone()
                } else {
                    base.truncate(base.len() - supers);
                    base.extend_from_slice(&found.path[supers..]);
                    base
                }
            }
            _ => continue,
        };
        // `use crate::x::{self, ..}` imports the module `x` itself.
        if path.last().is_some_and(|last| last == "self") {
            path.pop();
        }
        imports.push(Import {
            line: found.line,
            path,
        });
    }
    imports
}

/// A path in source, as written.
struct Found {
    /// The line of its last segment: in a grouped `use` over many lines,
    /// the line of the name itself.
    line: usize,
    /// The inline modules (`mod tests { .. }`) it sits in, outermost first.
    module: Vec<String>,
    /// The braces it sits in.
    depth: usize,
    /// Its segments, the first one included (`crate`, `super`, `std`..).
    path: Vec<String>,
    /// `as name`, in a `use` line.
    alias: Option<String>,
    in_use: bool,
}

/// Every leaf of every `use` declaration, and every path starting with
/// `crate::` or `super::` elsewhere in code.
fn find_paths(src: &str) -> Vec<Found> {
    let tokens = lex(src);
    let tok = |i: usize| tokens.get(i).map(|t| &t.tok);
    let mut found = Vec::new();
    let mut depth = 0;
    // Inline modules open around this point, with the depth inside each.
    let mut modules: Vec<(String, usize)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if modules.last().is_some_and(|(_, inside)| *inside == depth) {
                    modules.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(word) if word == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct('{'))) = (tok(i + 1), tok(i + 2)) {
                    depth += 1;
                    modules.push((name.clone(), depth));
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(word) if word == "use" => {
                let mut leaves = Vec::new();
                let next = use_tree(&tokens, i + 1, &[], &mut leaves);
                for (path, alias) in leaves {
                    found.push(Found {
                        line: path.last().unwrap().1,
                        module: modules.iter().map(|(name, _)| name.clone()).collect(),
                        depth,
                        path: path.into_iter().map(|(seg, _)| seg).collect(),
                        alias,
                        in_use: true,
                    });
                }
                // `use` is a keyword: the tokens it parsed hold no more paths
                // (and `use<..>` bounds parse as nothing, leaving `next` here).
                i = next.max(i + 1);
                continue;
            }
            // Inline: `crate::time::after(..)`, `Option<crate::x::Y>`. Not
            // the middle of a longer path, nor `$crate` in a macro (which
            // is this crate too, but only seen where the macro expands).
            Tok::Ident(word)
                if (word == "crate" || word == "super")
                    && tok(i + 1) == Some(&Tok::PathSep)
                    && !matches!(
                        i.checked_sub(1).and_then(tok),
                        Some(Tok::PathSep | Tok::Punct('$'))
                    ) =>
            {
                let line = tokens[i].line;
                let mut path = vec![word.clone()];
                i += 1;
                // Segments up to a turbofish, a call, or anything else.
                while let (Some(Tok::PathSep), Some(Tok::Ident(seg))) = (tok(i), tok(i + 1)) {
                    path.push(seg.clone());
                    i += 2;
                }
                found.push(Found {
                    line,
                    module: modules.iter().map(|(name, _)| name.clone()).collect(),
                    depth,
                    path,
                    alias: None,
                    in_use: false,
                });
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// A path segment with its line.
type Segment = (String, usize);

/// Parses the use tree at `tokens[i]` under `prefix` (the segments of the
/// enclosing groups), adds each leaf path and its alias to `leaves`, and
/// returns the index after the tree. Unknown tokens end the tree early, so
/// that anything but a use tree (`use<'a>` bounds) yields nothing.
fn use_tree(
    tokens: &[Token],
    mut i: usize,
    prefix: &[Segment],
    leaves: &mut Vec<(Vec<Segment>, Option<String>)>,
) -> usize {
    let tok = |i: usize| tokens.get(i).map(|t| &t.tok);
    let mut path = prefix.to_vec();
    if tok(i) == Some(&Tok::PathSep) {
        i += 1;
    }
    loop {
        match tok(i) {
            Some(Tok::Ident(seg)) if seg != "as" => {
                path.push((seg.clone(), tokens[i].line));
                i += 1;
                if tok(i) != Some(&Tok::PathSep) {
                    break;
                }
                i += 1;
            }
            Some(Tok::Punct('*')) => {
                path.push(("*".to_string(), tokens[i].line));
                i += 1;
                break;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                while i < tokens.len() && tok(i) != Some(&Tok::Punct('}')) {
                    // Never stall on a token no tree starts with.
                    i = use_tree(tokens, i, &path, leaves).max(i + 1);
                    if tok(i) == Some(&Tok::Punct(',')) {
                        i += 1;
                    }
                }
                return i + 1;
            }
            _ => break,
        }
    }
    if path.len() == prefix.len() {
        return i;
    }
    let alias = match (tok(i), tok(i + 1)) {
        (Some(Tok::Ident(word)), Some(Tok::Ident(name))) if word == "as" => {
            i += 2;
            Some(name.clone())
        }
        _ => None,
    };
    leaves.push((path, alias));
    i
}

#[derive(Debug, PartialEq)]
enum Tok {
    /// An identifier or keyword; raw identifiers lose their `r#`.
    Ident(String),
    /// `::`
    PathSep,
    /// Any other single character of punctuation.
    Punct(char),
    /// A string, character or number literal, or a lifetime: never part of
    /// a path, but kept so the token before a path is the real one.
    Literal,
}

struct Token {
    tok: Tok,
    line: usize,
}

/// Splits Rust source into the tokens paths are made of, dropping comments
/// (doc comments included: their examples are not this crate's imports) and
/// reducing literals to `Tok::Literal`, so nothing inside them is read.
fn lex(src: &str) -> Vec<Token> {
    let s: Vec<char> = src.chars().collect();
    let at = |i: usize| s.get(i).copied();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < s.len() {
        let start_line = line;
        let c = s[i];
        let tok = if c == '\n' {
            line += 1;
            i += 1;
            continue;
        } else if c.is_whitespace() {
            i += 1;
            continue;
        } else if c == '/' && at(i + 1) == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
            continue;
        } else if c == '/' && at(i + 1) == Some('*') {
            // Block comments nest.
            let mut open = 0;
            while i < s.len() {
                if s[i] == '/' && at(i + 1) == Some('*') {
                    open += 1;
                    i += 2;
                } else if s[i] == '*' && at(i + 1) == Some('/') {
                    open -= 1;
                    i += 2;
                    if open == 0 {
                        break;
                    }
                } else {
                    line += usize::from(s[i] == '\n');
                    i += 1;
                }
            }
            continue;
        } else if c == '"' {
            i = skip_string(&s, i, &mut line);
            Tok::Literal
        } else if c == '\'' {
            i = skip_char_or_lifetime(&s, i);
            Tok::Literal
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while at(i).is_some_and(|c| c.is_alphanumeric() || c == '_') {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            // Prefixed literals (`b".."`, `r#".."#`, `b'x'`, `c".."`) and
            // raw identifiers (`r#type`).
            match (word.as_str(), at(i)) {
                ("b" | "c", Some('"')) => {
                    i = skip_string(&s, i, &mut line);
                    Tok::Literal
                }
                ("b", Some('\'')) => {
                    i = skip_char_or_lifetime(&s, i);
                    Tok::Literal
                }
                ("r" | "br" | "cr", Some('"' | '#')) => {
                    if let Some(end) = skip_raw_string(&s, i, &mut line) {
                        i = end;
                        Tok::Literal
                    } else {
                        let start = i + 1;
                        i = start;
                        while at(i).is_some_and(|c| c.is_alphanumeric() || c == '_') {
                            i += 1;
                        }
                        Tok::Ident(s[start..i].iter().collect())
                    }
                }
                _ => Tok::Ident(word),
            }
        } else if c.is_ascii_digit() {
            // `1_000u32`, `0x1f`, `2.5e3`, not the `..` of a range.
            while at(i).is_some_and(|c| c.is_alphanumeric() || c == '_')
                || (at(i) == Some('.') && at(i + 1).is_some_and(|c| c.is_ascii_digit()))
            {
                i += 1;
            }
            Tok::Literal
        } else if c == ':' && at(i + 1) == Some(':') {
            i += 2;
            Tok::PathSep
        } else {
            i += 1;
            Tok::Punct(c)
        };
        tokens.push(Token {
            tok,
            line: start_line,
        });
    }
    tokens
}

/// From the opening `"` of a string, the index after its closing `"`.
fn skip_string(s: &[char], mut i: usize, line: &mut usize) -> usize {
    i += 1;
    while i < s.len() {
        match s[i] {
            '\\' => {
                // An escaped newline continues the string on the next line.
                *line += usize::from(s.get(i + 1) == Some(&'\n'));
                i += 2;
            }
            '"' => return i + 1,
            c => {
                *line += usize::from(c == '\n');
                i += 1;
            }
        }
    }
    i
}

/// From the `#`s or `"` after an `r`, the index after the raw string; `None`
/// if it is no raw string (a raw identifier, `r#type`).
fn skip_raw_string(s: &[char], mut i: usize, line: &mut usize) -> Option<usize> {
    let hashes = s[i..].iter().take_while(|c| **c == '#').count();
    i += hashes;
    if s.get(i) != Some(&'"') {
        return None;
    }
    i += 1;
    while i < s.len() {
        if s[i] == '"'
            && s[i + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == '#')
                .count()
                == hashes
        {
            return Some(i + 1 + hashes);
        }
        *line += usize::from(s[i] == '\n');
        i += 1;
    }
    Some(i)
}

/// From a `'`, the index after the character literal (`'x'`, `'"'`, `'\''`,
/// `'\u{1F600}'`) or the lifetime (`'static`) it starts.
fn skip_char_or_lifetime(s: &[char], i: usize) -> usize {
    if s.get(i + 1) == Some(&'\\') {
        // Past the backslash and the escaped character, to the closing `'`.
        let mut end = i + 3;
        while end < s.len() && s[end] != '\'' {
            end += 1;
        }
        end + 1
    } else if s.get(i + 2) == Some(&'\'') {
        i + 3
    } else {
        let mut end = i + 1;
        while s.get(end).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
            end += 1;
        }
        end
    }
}
