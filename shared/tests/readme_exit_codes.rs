//! The README's table of exit codes says what [`tandem_abi::exit::TABLE`]
//! says: the same codes, each with the same meaning.

use tandem_abi::exit::TABLE;

/// The rows of the first Markdown table whose header is `| code | meaning |`,
/// as (code, meaning) cells.
fn exit_code_rows(readme: &str) -> Vec<(String, String)> {
    let mut lines = readme
        .lines()
        .skip_while(|l| l.trim() != "| code | meaning |");
    assert!(
        lines.next().is_some(),
        "the README has no `| code | meaning |` table"
    );
    lines
        .skip(1) // the `| --- | --- |` line
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            assert_eq!(cells.len(), 2, "a row of two cells: {l}");
            (cells[0].to_owned(), cells[1].to_owned())
        })
        .collect()
}

#[test]
fn readme_exit_code_table_matches_the_abi_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let rows = exit_code_rows(&readme);
    // The app's own codes come first, as a range; every other row is one
    // taken code.
    assert_eq!(
        rows.first().map(|r| r.0.as_str()),
        Some("0 to 255"),
        "{rows:?}"
    );
    let taken: Vec<(u8, &str)> = rows[1..]
        .iter()
        .map(|(code, meaning)| {
            let code = code
                .parse()
                .unwrap_or_else(|_| panic!("README row code {code:?} is not a number"));
            (code, meaning.as_str())
        })
        .collect();
    let want: Vec<(u8, &str)> = TABLE.iter().map(|e| (e.code, e.meaning)).collect();
    assert_eq!(
        taken, want,
        "README.md's exit codes differ from tandem_abi::exit::TABLE"
    );
}
