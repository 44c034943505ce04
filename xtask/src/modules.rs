//! `cargo xtask check-modules`: the module graph of each crate has no cycle.
//!
//! Every crate root (`lib.rs`, `main.rs`) is read with `syn`, following its
//! `mod` declarations to their files (inline modules included, `#[cfg(test)]`
//! items left out: tests may look anywhere). A module *uses* another when a
//! path in it (a `use`, a type, an expression, or the tokens of a macro call
//! such as `bindgen!`'s `with:`) names an item of the other. Paths are
//! resolved as rustc would for `crate::`, `super::`, `self::` and child
//! modules, and through `use` re-exports (`crate::Error` that the root
//! re-exports from `error` is a use of `error`, not of the root). A `mod`
//! declaration alone is no use, but a parent naming a child's item is, as
//! is a child naming its parent's: then the parent and the child form a
//! cycle, which is reported like any other.
//!
//! The check prints every crate's edges with `--verbose`, each cycle (a
//! strongly connected component of more than one module) always, and fails
//! when there is one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// The crate roots checked, relative to the workspace.
const ROOTS: &[&str] = &[
    "guest/src/lib.rs",
    "host/src/lib.rs",
    "host/src/main.rs",
    "host/docker/src/lib.rs",
    "host/ext4/src/lib.rs",
    "host/layers/src/lib.rs",
    "host/registry/src/lib.rs",
];

/// A module path from the crate root (`[]` is the root).
type ModPath = Vec<String>;

#[derive(Default)]
struct Module {
    /// Child modules, by name.
    children: BTreeSet<String>,
    /// `use` aliases: local name → absolute path.
    aliases: BTreeMap<String, ModPath>,
    /// Paths named in this module, as written (first segment included).
    paths: Vec<Vec<String>>,
}

/// The modules of one crate.
#[derive(Default)]
struct Crate {
    modules: BTreeMap<ModPath, Module>,
}

/// Whether `attrs` hold exactly `#[cfg(test)]`.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string() == "test"))
}

impl Crate {
    fn load(root: &Path) -> Result<Self> {
        let mut krate = Self::default();
        krate.load_file(root, Vec::new(), root.parent().context("a crate root lives in a directory")?)?;
        Ok(krate)
    }

    /// Reads the module at `file`; `dir` is where its children's files are.
    fn load_file(&mut self, file: &Path, path: ModPath, dir: &Path) -> Result<()> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let parsed = syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
        self.load_items(&parsed.items, path, dir)
    }

    fn load_items(&mut self, items: &[syn::Item], path: ModPath, dir: &Path) -> Result<()> {
        self.modules.entry(path.clone()).or_default();
        for item in items {
            match item {
                syn::Item::Mod(m) if is_test(&m.attrs) => {}
                syn::Item::Mod(m) => {
                    let name = m.ident.to_string();
                    self.modules.get_mut(&path).expect("entered above").children.insert(name.clone());
                    let mut child = path.clone();
                    child.push(name.clone());
                    match &m.content {
                        Some((_, inner)) => self.load_items(inner, child, &dir.join(&name))?,
                        None => {
                            let flat = dir.join(format!("{name}.rs"));
                            let file = if flat.exists() { flat } else { dir.join(&name).join("mod.rs") };
                            self.load_file(&file, child, &dir.join(&name))?;
                        }
                    }
                }
                syn::Item::Use(u) if is_test(&u.attrs) => {}
                syn::Item::Use(u) => {
                    let mut found = Vec::new();
                    flatten_use(&u.tree, &mut Vec::new(), &mut found);
                    let module = self.modules.get_mut(&path).expect("entered above");
                    for (alias, target) in found {
                        module.paths.push(target.clone());
                        if let Some(alias) = alias {
                            module.aliases.insert(alias, target);
                        }
                    }
                }
                other if item_is_test(other) => {}
                other => {
                    let mut paths = PathCollector::default();
                    paths.visit_item(other);
                    self.modules.get_mut(&path).expect("entered above").paths.extend(paths.found);
                }
            }
        }
        Ok(())
    }

    /// The absolute path `written` (as it appears in `module`) names, if it
    /// starts inside this crate.
    fn absolute(&self, module: &ModPath, written: &[String]) -> Option<ModPath> {
        let (first, rest) = written.split_first()?;
        let mut base = match first.as_str() {
            "crate" => Vec::new(),
            "self" => module.clone(),
            "super" => {
                let mut base = module.clone();
                base.pop()?;
                let mut rest = rest;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                return Some(base);
            }
            name if self.modules.get(module).is_some_and(|m| m.children.contains(name)) => {
                let mut base = module.clone();
                base.push(name.to_owned());
                base
            }
            name => {
                // A name a `use` brought in, resolved where that `use` is.
                let alias = self.modules.get(module)?.aliases.get(name)?;
                if alias.first().is_some_and(|first| first == name) {
                    return None;
                }
                let mut base = alias.clone();
                base.extend(rest.iter().cloned());
                return self.absolute(module, &base);
            }
        };
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The module that defines the item at `path`: the longest prefix that
    /// is a module, followed through that module's `use` aliases.
    fn owner(&self, path: &[String], depth: usize) -> Option<ModPath> {
        let len = (0..=path.len()).rev().find(|&n| self.modules.contains_key(&path[..n]))?;
        let module = path[..len].to_vec();
        if depth < 8
            && let Some(next) = path.get(len)
            && let Some(alias) = self.modules[&module].aliases.get(next)
        {
            let mut through = alias.clone();
            through.extend(path[len + 1..].iter().cloned());
            // An alias of another crate's item is no use of this crate.
            let target = self.absolute(&module, &through)?;
            return self.owner(&target, depth + 1);
        }
        Some(module)
    }

    fn edges(&self) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (path, module) in &self.modules {
            let out = edges.entry(path.clone()).or_default();
            for written in &module.paths {
                let Some(target) = self.absolute(path, written).and_then(|abs| self.owner(&abs, 0)) else { continue };
                if &target != path {
                    if std::env::var_os("XTASK_MODULES_DEBUG").is_some() {
                        eprintln!("{} -> {}: {}", name(path), name(&target), written.join("::"));
                    }
                    out.insert(target);
                }
            }
        }
        edges
    }
}

fn item_is_test(item: &syn::Item) -> bool {
    match item {
        syn::Item::Fn(f) => is_test(&f.attrs),
        syn::Item::Impl(i) => is_test(&i.attrs),
        syn::Item::Struct(s) => is_test(&s.attrs),
        syn::Item::Enum(e) => is_test(&e.attrs),
        syn::Item::Const(c) => is_test(&c.attrs),
        syn::Item::Static(s) => is_test(&s.attrs),
        syn::Item::Trait(t) => is_test(&t.attrs),
        syn::Item::Macro(m) => is_test(&m.attrs),
        _ => false,
    }
}

/// Each leaf of a `use` tree: its local name (`None` for a glob) and path.
fn flatten_use(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Option<String>, Vec<String>)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut path = prefix.clone();
            if name == "self" {
                out.push((prefix.last().cloned(), path));
            } else {
                path.push(name.clone());
                out.push((Some(name), path));
            }
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            if r.ident != "self" {
                path.push(r.ident.to_string());
            }
            out.push((Some(r.rename.to_string()), path));
        }
        syn::UseTree::Glob(_) => out.push((None, prefix.clone())),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                flatten_use(tree, prefix, out);
            }
        }
    }
}

/// Every path in an item, and every `a::b::c` run of tokens in its macros.
#[derive(Default)]
struct PathCollector {
    found: Vec<Vec<String>>,
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.found.push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        scan_tokens(mac.tokens.clone(), &mut self.found);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {
        // `pub(crate)` names no item.
    }

    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {
        // Modules are loaded on their own.
    }
}

/// Paths in a macro's tokens: runs of identifiers joined by `::`.
fn scan_tokens(tokens: TokenStream, found: &mut Vec<Vec<String>>) {
    let mut run: Vec<String> = Vec::new();
    let mut colons = 0;
    let flush = |run: &mut Vec<String>, found: &mut Vec<Vec<String>>| {
        if run.len() > 1 {
            found.push(std::mem::take(run));
        }
        run.clear();
    };
    for token in tokens {
        match token {
            TokenTree::Ident(ident) if run.is_empty() || colons == 2 => {
                run.push(ident.to_string());
                colons = 0;
            }
            TokenTree::Punct(p) if p.as_char() == ':' && !run.is_empty() && colons < 2 => colons += 1,
            TokenTree::Group(g) => {
                flush(&mut run, found);
                colons = 0;
                scan_tokens(g.stream(), found);
            }
            other => {
                flush(&mut run, found);
                colons = 0;
                if let TokenTree::Ident(ident) = other {
                    run.push(ident.to_string());
                }
            }
        }
    }
    flush(&mut run, found);
}

/// Tarjan's strongly connected components with more than one member.
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    fn connect<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                connect(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            connect(&mut s, v);
        }
    }
    s.found
}

fn name(path: &ModPath) -> String {
    if path.is_empty() { "crate".to_owned() } else { path.join("::") }
}

/// Runs the check; `verbose` prints every edge.
pub fn check(root: &Path, verbose: bool) -> Result<()> {
    let mut failed = 0;
    for crate_root in ROOTS {
        let file: PathBuf = root.join(crate_root);
        let krate = Crate::load(&file)?;
        let edges = krate.edges();
        let count: usize = edges.values().map(BTreeSet::len).sum();
        println!("{crate_root}: {} modules, {count} uses", edges.len());
        if verbose {
            for (from, to) in &edges {
                for to in to {
                    println!("  {} -> {}", name(from), name(to));
                }
            }
        }
        for cycle in cycles(&edges) {
            failed += 1;
            println!("  cycle: {}", cycle.iter().map(name).collect::<Vec<_>>().join(", "));
            for from in &cycle {
                for to in edges[from].iter().filter(|to| cycle.contains(to)) {
                    println!("    {} -> {}", name(from), name(to));
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} module cycle(s)");
    }
    println!("no module cycle");
    Ok(())
}
