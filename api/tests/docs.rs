//! The problem types are part of the API contract: docs/api.md must list every one, with the
//! status the CA sends.

use pedm_api::ProblemType;

#[test]
fn every_problem_type_is_documented_with_its_status() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md"))
        .expect("docs/api.md");
    for t in ProblemType::ALL {
        let row = doc
            .lines()
            .find(|l| l.contains(&format!("`{}`", t.uri())))
            .unwrap_or_else(|| panic!("{} is not in docs/api.md", t.uri()));
        assert!(
            row.contains(&format!("| {} |", t.status())),
            "docs/api.md gives another status for {}: {row}",
            t.uri()
        );
    }
}
