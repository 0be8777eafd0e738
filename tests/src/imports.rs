//! The import graph of a crate's library, drawn from its sources: which file uses which. A
//! module is a file (`x.rs`, `x/mod.rs`); an edge is a path naming another module's items
//! (`crate::…`, `super::…`, `self::…`, or a child module's name), resolved to the deepest file
//! it reaches. Module declarations, `pub use` re-exports (a facade, not a dependency), comments
//! and `#[cfg(test)]` code are not edges. The layout test proves no crate has a circle, and
//! prints each crate's layers, bottom first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from its crate's root (`["jobs", "create"]`); the root is empty.
pub type ModPath = Vec<String>;

/// One crate's library modules and who uses whom.
#[derive(Debug)]
pub struct Graph {
    pub files: BTreeMap<ModPath, PathBuf>,
    pub edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

/// The module path of each file under `src` (`main.rs` and `bin/` are other crates).
fn modules(src: &Path) -> anyhow::Result<BTreeMap<ModPath, PathBuf>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src)?;
            let mut parts: ModPath = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            let last = parts.pop().expect("a file").trim_end_matches(".rs").to_owned();
            match last.as_str() {
                "lib" if parts.is_empty() => {}
                "main" if parts.is_empty() => continue,
                "mod" => {}
                _ => parts.push(last),
            }
            files.insert(parts, path);
        }
    }
    Ok(files)
}

/// The source a dependency can hide in: no comments, nothing from `#[cfg(test)]` on, no
/// module declarations or re-exports.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut in_reexport = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if in_reexport {
            in_reexport = !t.contains(';');
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        let bare = t.trim_start_matches("pub(crate) ").trim_start_matches("pub(super) ").trim_start_matches("pub ");
        if t.starts_with("pub") && bare.starts_with("use ") {
            in_reexport = !t.contains(';');
            continue;
        }
        if bare.starts_with("mod ") && bare.ends_with(';') {
            continue;
        }
        out.push_str(line.split(" //").next().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the use-tree or path starting at `s` (after its first segment's `::`) into leaf
/// paths: `a::{b::c, d}` gives `a::b::c` and `a::d`.
fn paths(s: &str) -> Vec<Vec<String>> {
    fn tree(s: &[char], i: &mut usize) -> Vec<Vec<String>> {
        let mut seg = String::new();
        while *i < s.len() && is_ident(s[*i]) {
            seg.push(s[*i]);
            *i += 1;
        }
        if *i < s.len() && s[*i] == '{' && seg.is_empty() {
            *i += 1;
            let mut all = Vec::new();
            loop {
                while *i < s.len() && s[*i].is_whitespace() {
                    *i += 1;
                }
                if *i >= s.len() || s[*i] == '}' {
                    *i += 1;
                    return all;
                }
                let before = *i;
                all.extend(tree(s, i));
                if *i == before {
                    // `*`, `as`, or anything else that names no module: step over it.
                    *i += 1;
                }
                while *i < s.len() && (s[*i].is_whitespace() || s[*i] == ',') {
                    *i += 1;
                }
            }
        }
        if seg.is_empty() {
            return vec![vec![]];
        }
        if s.get(*i) == Some(&':') && s.get(*i + 1) == Some(&':') {
            *i += 2;
            return tree(s, i)
                .into_iter()
                .map(|mut p| {
                    p.insert(0, seg.clone());
                    p
                })
                .collect();
        }
        vec![vec![seg]]
    }
    let chars: Vec<char> = s.chars().collect();
    tree(&chars, &mut 0)
}

/// What a module re-exports (`pub use a::b::Item;`): each name, and the path it stands for
/// (relative paths taken from the module itself).
fn reexports(module: &ModPath, text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut statement = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if statement.is_empty() && !(t.starts_with("pub") && t.contains("use ")) {
            continue;
        }
        statement.push_str(t);
        statement.push(' ');
        if !t.contains(';') {
            continue;
        }
        let tree = statement.split_once("use ").map_or("", |(_, rest)| rest).to_owned();
        statement.clear();
        for leaf in paths(&tree) {
            let Some(name) = leaf.last().cloned() else { continue };
            let mut full = match leaf.first().map(String::as_str) {
                Some("crate") => vec![],
                Some("super") => module[..module.len().saturating_sub(1)].to_vec(),
                Some("self") => module.clone(),
                _ => {
                    let mut m = module.clone();
                    m.push(String::new());
                    m
                }
            };
            if full.last().is_some_and(String::is_empty) {
                full.pop();
                full.extend(leaf);
            } else {
                full.extend(leaf.into_iter().skip(1));
            }
            out.insert(name, full);
        }
    }
    out
}

/// The deepest module of `files` that `path` reaches, seeing through re-exports.
fn resolve(
    files: &BTreeMap<ModPath, PathBuf>,
    exported: &BTreeMap<ModPath, BTreeMap<String, Vec<String>>>,
    path: &[String],
) -> ModPath {
    let module = (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| files.contains_key(p)).unwrap_or_default();
    let through = path.get(module.len()).and_then(|item| exported.get(&module)?.get(item));
    match through {
        Some(target) if target.as_slice() != path => {
            let module2 = (0..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|p| files.contains_key(p))
                .unwrap_or_default();
            if module2 == module { module } else { module2 }
        }
        _ => module,
    }
}

/// The import graph of the library under `src`.
pub fn graph(src: &Path) -> anyhow::Result<Graph> {
    let files = modules(src)?;
    let mut exported = BTreeMap::new();
    for (module, file) in &files {
        exported.insert(module.clone(), reexports(module, &std::fs::read_to_string(file)?));
    }
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (module, file) in &files {
        let code = code_of(&std::fs::read_to_string(file)?);
        let children: BTreeSet<&str> = files
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .map(|m| m.last().expect("a child").as_str())
            .collect();
        let out = edges.entry(module.clone()).or_default();
        let bytes = code.as_bytes();
        let mut i = 0;
        while i < code.len() {
            let boundary = i == 0 || !is_ident(bytes[i - 1] as char) && bytes[i - 1] != b':';
            let word: String = code[i..].chars().take_while(|c| is_ident(*c)).collect();
            if word.is_empty() || !boundary || !code[i + word.len()..].starts_with("::") {
                i += if word.is_empty() { code[i..].chars().next().map_or(1, char::len_utf8) } else { word.len() };
                continue;
            }
            let base: Option<ModPath> = match word.as_str() {
                "crate" => Some(vec![]),
                "self" => Some(module.clone()),
                "super" => Some(module[..module.len().saturating_sub(1)].to_vec()),
                w if children.contains(w) => Some(module.clone()),
                _ => None,
            };
            let start =
                if base.as_ref().is_some_and(|_| children.contains(word.as_str())) { i } else { i + word.len() + 2 };
            if let Some(base) = base {
                for mut leaf in paths(&code[start..]) {
                    let mut full = base.clone();
                    while leaf.first().is_some_and(|s| s == "super") {
                        leaf.remove(0);
                        full.pop();
                    }
                    full.extend(leaf);
                    let to = resolve(&files, &exported, &full);
                    if &to != module {
                        out.insert(to);
                    }
                }
            }
            i += word.len() + 2;
        }
    }
    Ok(Graph { files, edges })
}

impl Graph {
    /// Every circle: each a set of modules that reach one another (Tarjan's SCCs of size > 1).
    pub fn circles(&self) -> Vec<Vec<ModPath>> {
        struct Tarjan<'g> {
            g: &'g Graph,
            index: BTreeMap<&'g ModPath, usize>,
            low: BTreeMap<&'g ModPath, usize>,
            stack: Vec<&'g ModPath>,
            on: BTreeSet<&'g ModPath>,
            found: Vec<Vec<ModPath>>,
        }
        impl<'g> Tarjan<'g> {
            fn visit(&mut self, v: &'g ModPath) {
                let n = self.index.len();
                self.index.insert(v, n);
                self.low.insert(v, n);
                self.stack.push(v);
                self.on.insert(v);
                for w in self.g.edges.get(v).into_iter().flatten() {
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let lw = self.low[w];
                        let lv = self.low.get_mut(v).expect("visited");
                        *lv = (*lv).min(lw);
                    } else if self.on.contains(w) {
                        let iw = self.index[w];
                        let lv = self.low.get_mut(v).expect("visited");
                        *lv = (*lv).min(iw);
                    }
                }
                if self.low[v] == self.index[v] {
                    let mut scc = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on.remove(w);
                        scc.push(w.clone());
                        if w == v {
                            break;
                        }
                    }
                    if scc.len() > 1 {
                        scc.sort();
                        self.found.push(scc);
                    }
                }
            }
        }
        let mut t = Tarjan {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on: BTreeSet::new(),
            found: Vec::new(),
        };
        for v in self.files.keys() {
            if !t.index.contains_key(v) {
                t.visit(v);
            }
        }
        t.found
    }

    /// The modules in layers, bottom first: each uses only modules of lower layers (a graph
    /// with circles puts them, and all above, in no layer).
    pub fn layers(&self) -> Vec<Vec<ModPath>> {
        let mut level: BTreeMap<&ModPath, usize> = BTreeMap::new();
        let mut changed = true;
        while changed {
            changed = false;
            for (v, out) in &self.edges {
                if level.contains_key(v) {
                    continue;
                }
                if out.iter().all(|w| level.contains_key(w)) {
                    let l = out.iter().map(|w| level[w] + 1).max().unwrap_or(0);
                    level.insert(v, l);
                    changed = true;
                }
            }
        }
        let mut layers: Vec<Vec<ModPath>> = Vec::new();
        for (v, l) in level {
            if layers.len() <= l {
                layers.resize(l + 1, Vec::new());
            }
            layers[l].push(v.clone());
        }
        layers
    }

    /// The edges of one circle, for the message that names it.
    pub fn describe(&self, circle: &[ModPath]) -> String {
        let name = |m: &ModPath| if m.is_empty() { "lib".to_owned() } else { m.join("::") };
        let mut lines = Vec::new();
        for v in circle {
            for w in self.edges.get(v).into_iter().flatten().filter(|w| circle.contains(w)) {
                lines.push(format!("  {} → {}", name(v), name(w)));
            }
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand_to_their_leaves() {
        assert!(paths("a::{b::*, c}").contains(&vec!["a".to_owned(), "c".to_owned()]), "a glob ends");
        let got = paths("a::{b::c, d::{e, f}}, g;");
        let want: Vec<Vec<String>> = [vec!["a", "b", "c"], vec!["a", "d", "e"], vec!["a", "d", "f"]]
            .iter()
            .map(|p| p.iter().map(|s| s.to_string()).collect())
            .collect();
        assert_eq!(got, want);
        assert_eq!(paths("x::Y(1)"), vec![vec!["x".to_owned(), "Y".to_owned()]]);
    }

    #[test]
    fn a_circle_is_found_and_a_reexport_or_a_comment_is_not_an_edge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path();
        std::fs::create_dir(src.join("k")).expect("mkdir");
        std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\npub mod k;\n").expect("write");
        std::fs::write(src.join("a.rs"), "use crate::b::X;\n// crate::k::Y\n").expect("write");
        std::fs::write(src.join("b.rs"), "pub use crate::a::Z;\nfn f() { crate::k::w::g() }\n").expect("write");
        std::fs::write(src.join("k/mod.rs"), "mod w;\nfn h() { w::g(); }\n").expect("write");
        std::fs::write(src.join("k/w.rs"), "fn g() {}\n#[cfg(test)]\nmod tests { use crate::a::Q; }\n").expect("write");
        let g = graph(src).expect("graph");
        assert!(g.circles().is_empty(), "{:?}", g.edges);
        assert_eq!(g.layers().len(), 3, "{:?}", g.layers());
        // A path through a re-export is an edge to where the item lives.
        std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\npub mod k;\npub use k::w::G;\n").expect("write");
        std::fs::write(src.join("a.rs"), "fn f() -> crate::G { todo!() }\n").expect("write");
        let g = graph(src).expect("graph");
        assert!(g.edges[&vec!["a".to_owned()]].contains(&vec!["k".to_owned(), "w".to_owned()]), "{:?}", g.edges);
        std::fs::write(src.join("a.rs"), "use crate::b::X;\n").expect("write");
        std::fs::write(src.join("k/w.rs"), "fn g() { super::super::a::f() }\n").expect("write");
        let g = graph(src).expect("graph");
        let circles = g.circles();
        assert_eq!(circles.len(), 1, "{circles:?}");
        assert_eq!(g.describe(&circles[0]).lines().count(), 3, "{}", g.describe(&circles[0]));
    }
}
