//! The house's shape, drawn from the imports: no crate's library has a circle, and each
//! crate's layers (bottom first) are printed for the README's picture
//! (`cargo test -p pvefleet-testbed --test layout -- --nocapture`).

use std::path::Path;

use pvefleet_testbed::imports;

fn name(m: &imports::ModPath) -> String {
    if m.is_empty() { "lib".to_owned() } else { m.join("::") }
}

#[test]
fn no_crate_has_an_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
    let mut circles = Vec::new();
    for krate in ["schemas", "agent", "coordinator", "tests"] {
        let g = imports::graph(&root.join(krate).join("src")).expect("read the sources");
        assert!(g.files.len() > 3, "{krate}: only {} modules found", g.files.len());
        println!("{krate}, bottom layer first:");
        for (i, layer) in g.layers().iter().enumerate() {
            println!("  {i}: {}", layer.iter().map(name).collect::<Vec<_>>().join(", "));
        }
        for circle in g.circles() {
            circles.push(format!(
                "{krate}: {}\n{}",
                circle.iter().map(name).collect::<Vec<_>>().join(", "),
                g.describe(&circle)
            ));
        }
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}
