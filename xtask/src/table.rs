//! Plain-text tables with aligned columns: the first column left-aligned,
//! the others (numbers) right-aligned.

pub struct Table<const N: usize> {
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    pub fn new(header: [&str; N]) -> Self {
        Table {
            rows: vec![header.map(str::to_owned)],
        }
    }

    pub fn row(&mut self, cells: [String; N]) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths = [0usize; N];
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for (i, row) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (col, (cell, &w)) in row.iter().zip(&widths).enumerate() {
                if col == 0 {
                    line.push_str(&format!("{cell:<w$}"));
                } else {
                    line.push_str(&format!("  {cell:>w$}"));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if i == 0 {
                let total = widths.iter().sum::<usize>() + 2 * N.saturating_sub(1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// Prints the usual table of timing summaries: one row per `(name, summary)`
/// with median, p10, p90 and min, under a `title` column heading.
pub fn print_summaries(title: &str, rows: &[(&str, crate::stats::Summary)]) {
    let mut table = Table::new([title, "median", "p10", "p90", "min"]);
    for (name, s) in rows {
        table.row([
            (*name).into(),
            format!("{:.1}", s.median),
            format!("{:.1}", s.p10),
            format!("{:.1}", s.p90),
            format!("{:.1}", s.min),
        ]);
    }
    table.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(["name", "ms"]);
        t.row(["tandem".to_owned(), "1.5".to_owned()]);
        t.row(["b".to_owned(), "12.25".to_owned()]);
        assert_eq!(
            t.render(),
            "name       ms\n-------------\ntandem    1.5\nb       12.25\n"
        );
    }
}
