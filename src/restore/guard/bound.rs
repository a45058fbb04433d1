//! How big a statement is before it is parsed: a count of its tokens, in one linear pass.
//!
//! Parsing a statement costs memory in proportion to its parse tree, which grows with its tokens
//! (a multi-row `VALUES` list, an operator chain), not with its bytes (one long string literal is
//! one node). Counting first lets the guard refuse what would take gigabytes to parse before it
//! allocates any of it.

/// Roughly how many tokens `sql` has: words, numbers, quoted identifiers and strings count one
/// each, every other punctuation byte one. The content of a dollar-quoted string counts as code,
/// token by token: it may be a function body, which is parsed in turn. Comments count nothing.
/// Never less than what the parser makes of it.
pub fn tokens(sql: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    let len = sql.len();
    while i < len {
        let c = sql[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &sql[i..]).map_or(len, |p| i + p + 1);
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < len {
                    if sql[i] == b'/' && sql.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if sql[i] == b'*' && sql.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                let escape = i > 0 && matches!(sql[i - 1], b'e' | b'E');
                i = quoted(sql, i + 1, b'\'', escape);
                n += 1;
            }
            b'"' => {
                i = quoted(sql, i + 1, b'"', false);
                n += 1;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 => {
                while i < len && (sql[i].is_ascii_alphanumeric() || sql[i] == b'_' || sql[i] == b'$' || sql[i] >= 0x80)
                {
                    i += 1;
                }
                n += 1;
            }
            // `$tag$` (or `$1`): one token; what a dollar quote holds is counted as code.
            _ => {
                i += 1;
                n += 1;
            }
        }
    }
    n
}

/// The index just past the quote closing a string that starts at `from` (a doubled quote, or a
/// backslash in an `E''` string, escapes).
fn quoted(sql: &[u8], mut from: usize, quote: u8, escape: bool) -> usize {
    while from < sql.len() {
        let c = sql[from];
        if escape && c == b'\\' {
            from += 2;
        } else if c == quote {
            if sql.get(from + 1) == Some(&quote) {
                from += 2;
            } else {
                return from + 1;
            }
        } else {
            from += 1;
        }
    }
    sql.len()
}

#[cfg(test)]
mod tests {
    use super::tokens;

    #[test]
    fn counts_tokens_not_bytes() {
        assert_eq!(tokens(b"SELECT 1"), 2);
        assert_eq!(tokens(b"INSERT INTO t VALUES (1),(2);"), 12);
        let long = format!("INSERT INTO t VALUES ('{}');", "x".repeat(1 << 20));
        assert_eq!(tokens(long.as_bytes()), 8, "a long string is one token");
        assert_eq!(
            tokens(b"SELECT 'it''s' -- a comment\n /* a /* nested */ comment */ + 1"),
            4
        );
        assert_eq!(tokens(b"SELECT E'a\\'b' + \"we\"\"ird\""), 5);
        assert_eq!(
            tokens(b"AS $$ BEGIN RETURN 1; END $$"),
            10,
            "a dollar quote's content is code"
        );
        let values = "(1),".repeat(1000);
        assert!(tokens(format!("VALUES {values}").as_bytes()) >= 4000);
    }
}
