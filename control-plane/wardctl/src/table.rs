//! Tables for `-o table`: left-aligned columns, by display width.

use unicode_width::UnicodeWidthStr as _;

/// Left-aligned columns two spaces apart, each as wide as its widest cell
/// on screen (a name in Greek or with an accent is one column per letter,
/// not per byte); no trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.width());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            s.extend(std::iter::repeat_n(
                ' ',
                widths[i].saturating_sub(c.width()),
            ));
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header);
    for r in rows {
        out.push_str(&line(&r.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_by_display_width() {
        let rows = vec![
            vec!["infusion-pumps".to_owned(), "ok".to_owned()],
            vec!["réanimation".to_owned(), "é".to_owned()],
            vec!["放射線科".to_owned(), "x".to_owned()],
        ];
        let text = table(&["NAME", "STATE"], &rows);
        // Every STATE starts in the same screen column.
        let columns: Vec<usize> = text
            .lines()
            .map(|line| {
                let at = line.rfind("  ").map_or(0, |i| i + 2);
                line[..at].width()
            })
            .collect();
        assert!(columns.iter().all(|c| *c == columns[0]), "{text}");
        assert_eq!(
            text,
            "NAME            STATE\ninfusion-pumps  ok\nréanimation     é\n放射線科        x\n"
        );
    }
}
