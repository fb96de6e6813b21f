//! A SQL statement splitter that knows enough lexical structure to find the `;` that end
//! statements: quoted strings and identifiers, dollar quotes, line and (nested) block comments,
//! PostgreSQL `BEGIN ATOMIC ... END` bodies and SQLite `CREATE TRIGGER ... BEGIN ... END`.
//!
//! Used where a dialect must run statements one at a time (PostgreSQL non-transactional
//! steps: `CREATE INDEX CONCURRENTLY` refuses to run in the implicit transaction of a
//! multi-statement query) and to find MySQL statements that commit implicitly.

use crate::types::Dialect;

/// Split `sql` into statements: each trimmed, without its terminating `;`; pieces that hold
/// only whitespace and comments are dropped.
pub fn split_statements(sql: &str, dialect: Dialect) -> Vec<&str> {
    let mut out = Vec::new();
    let mut scanner = Scanner::new(sql, dialect);
    let mut start = 0;
    while let Some(tok) = scanner.next_token() {
        if let Token::Semicolon(at) = tok {
            push_statement(&mut out, &sql[start..at], dialect);
            start = at + 1;
        }
    }
    push_statement(&mut out, &sql[start..], dialect);
    out
}

/// The first keyword of a statement, uppercased, skipping leading comments (a MySQL
/// executable comment `/*!50100 ... */` counts as code). None for an empty statement.
pub fn first_keyword(stmt: &str, dialect: Dialect) -> Option<String> {
    match Scanner::new(stmt, dialect).next_token()? {
        Token::Word(w) => Some(w.to_ascii_uppercase()),
        Token::ExecComment(body) => first_keyword(body, dialect),
        Token::Other | Token::Semicolon(_) | Token::Quoted => None,
    }
}

/// The bare words (keywords and identifiers) of `sql` in order, skipping comments, strings,
/// quoted identifiers and dollar quotes (a MySQL executable comment's words count as code).
pub fn words(sql: &str, dialect: Dialect) -> Vec<&str> {
    let mut out = Vec::new();
    let mut scanner = Scanner::new(sql, dialect);
    while let Some(tok) = scanner.next_token() {
        match tok {
            Token::Word(w) => out.push(w),
            Token::ExecComment(body) => out.extend(words(body, dialect)),
            Token::Other | Token::Semicolon(_) | Token::Quoted => {}
        }
    }
    out
}

/// The `CHECK (...)` clauses of a `CREATE TABLE` statement as written (whitespace squashed),
/// in order: SQLite reports check constraints only through the table's SQL text.
pub fn check_clauses(create_table: &str, dialect: Dialect) -> Vec<String> {
    let b = create_table.as_bytes();
    let mut scanner = Scanner::new(create_table, dialect);
    let mut out = Vec::new();
    let mut after_check = false;
    let mut start = None;
    let mut level = 0usize;
    while let Some(tok) = scanner.next_token() {
        let last = b.get(scanner.i.wrapping_sub(1)).copied();
        match (tok, start) {
            (Token::Other, Some(s)) => {
                if last == Some(b'(') {
                    level += 1;
                } else if last == Some(b')') {
                    level -= 1;
                    if level == 0 {
                        let text = &create_table[s..scanner.i];
                        out.push(text.split_whitespace().collect::<Vec<_>>().join(" "));
                        start = None;
                    }
                }
            }
            (_, Some(_)) => {}
            (Token::Word(w), None) => after_check = w.eq_ignore_ascii_case("check"),
            (Token::Other, None) if after_check && last == Some(b'(') => {
                start = Some(scanner.i - 1);
                level = 1;
                after_check = false;
            }
            _ => after_check = false,
        }
    }
    out
}

fn push_statement<'a>(out: &mut Vec<&'a str>, piece: &'a str, dialect: Dialect) {
    let piece = piece.trim();
    let mut scanner = Scanner::new(piece, dialect);
    if scanner.next_token().is_some() {
        out.push(piece);
    }
}

/// What the scanner reports; comments and whitespace are skipped silently.
enum Token<'a> {
    /// A `;` that ends a statement, at this byte offset.
    Semicolon(usize),
    /// A bare word (keyword or identifier).
    Word(&'a str),
    /// A quoted string or identifier, or a dollar-quoted body.
    Quoted,
    /// MySQL `/*! ... */`: the body (after the optional version number) is executed.
    ExecComment(&'a str),
    /// Any other character that is code.
    Other,
}

struct Scanner<'a> {
    sql: &'a str,
    b: &'a [u8],
    i: usize,
    dialect: Dialect,
    /// Nesting of `BEGIN ... END` blocks in which `;` does not end the statement.
    depth: usize,
    /// How many of the current statement's first words were seen, up to 3, and what they
    /// were (to spot `CREATE [TEMP] TRIGGER`). Words are compared in place, never copied:
    /// a seed file has millions of them.
    head_len: u8,
    head_create: bool,
    head_trigger: bool,
    /// The previous word was `BEGIN` (PostgreSQL `BEGIN ATOMIC`).
    prev_begin: bool,
}

impl<'a> Scanner<'a> {
    fn new(sql: &'a str, dialect: Dialect) -> Self {
        Scanner {
            sql,
            b: sql.as_bytes(),
            i: 0,
            dialect,
            depth: 0,
            head_len: 0,
            head_create: false,
            head_trigger: false,
            prev_begin: false,
        }
    }

    fn peek(&self, off: usize) -> Option<u8> {
        self.b.get(self.i + off).copied()
    }

    fn next_token(&mut self) -> Option<Token<'a>> {
        loop {
            let c = self.peek(0)?;
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => self.i += 1,
                b'-' if self.peek(1) == Some(b'-') && self.line_comment_ok() => self.skip_line(),
                b'#' if self.dialect == Dialect::Mysql => self.skip_line(),
                b'/' if self.peek(1) == Some(b'*') => {
                    if self.dialect == Dialect::Mysql && self.peek(2) == Some(b'!') {
                        let body_start = self.i + 3;
                        self.skip_block_comment();
                        let end = self.i.saturating_sub(2).max(body_start);
                        let body = &self.sql[body_start..end];
                        let body = body.trim_start_matches(|c: char| c.is_ascii_digit());
                        return Some(Token::ExecComment(body));
                    }
                    self.skip_block_comment();
                }
                b';' => {
                    let at = self.i;
                    self.i += 1;
                    if self.depth == 0 {
                        self.head_len = 0;
                        self.head_create = false;
                        self.head_trigger = false;
                        self.prev_begin = false;
                        return Some(Token::Semicolon(at));
                    }
                    return Some(Token::Other);
                }
                b'\'' => {
                    let backslash = self.backslash_escapes();
                    self.skip_quoted(b'\'', backslash);
                    return Some(Token::Quoted);
                }
                b'"' => {
                    let backslash = self.dialect == Dialect::Mysql;
                    self.skip_quoted(b'"', backslash);
                    return Some(Token::Quoted);
                }
                b'`' if self.dialect != Dialect::Postgres => {
                    self.skip_quoted(b'`', false);
                    return Some(Token::Quoted);
                }
                b'[' if self.dialect == Dialect::Sqlite => {
                    self.skip_until(b']');
                    return Some(Token::Quoted);
                }
                b'$' if self.dialect == Dialect::Postgres && self.dollar_tag().is_some() => {
                    self.skip_dollar_quoted();
                    return Some(Token::Quoted);
                }
                c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                    let start = self.i;
                    while let Some(c) = self.peek(0) {
                        if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
                            self.i += 1;
                        } else {
                            break;
                        }
                    }
                    let word = &self.sql[start..self.i];
                    self.on_word(word);
                    return Some(Token::Word(word));
                }
                _ => {
                    self.i += 1;
                    return Some(Token::Other);
                }
            }
        }
    }

    /// Track blocks whose `;` do not end the statement.
    fn on_word(&mut self, word: &str) {
        let is = |kw: &str| word.eq_ignore_ascii_case(kw);
        if self.head_len < 3 {
            if self.head_len == 0 {
                self.head_create = is("CREATE");
            }
            self.head_trigger |= is("TRIGGER");
            self.head_len += 1;
        }
        match self.dialect {
            Dialect::Postgres => {
                let opens = (self.prev_begin && is("ATOMIC")) || (self.depth > 0 && is("CASE"));
                if opens {
                    self.depth += 1;
                } else if self.depth > 0 && is("END") {
                    self.depth -= 1;
                }
            }
            Dialect::Sqlite => {
                let trigger = self.head_create && self.head_trigger;
                if trigger && (is("BEGIN") || (self.depth > 0 && is("CASE"))) {
                    self.depth += 1;
                } else if self.depth > 0 && is("END") {
                    self.depth -= 1;
                }
            }
            Dialect::Mysql => {}
        }
        self.prev_begin = is("BEGIN");
    }

    /// MySQL requires whitespace (or the end) after `--` for a comment.
    fn line_comment_ok(&self) -> bool {
        self.dialect != Dialect::Mysql || self.peek(2).is_none_or(|c| c.is_ascii_whitespace())
    }

    /// Whether a `'` string at the cursor treats backslash as an escape.
    fn backslash_escapes(&self) -> bool {
        match self.dialect {
            Dialect::Mysql => true,
            Dialect::Sqlite => false,
            // E'...' strings; `E` must start a word.
            Dialect::Postgres => {
                self.i >= 1
                    && matches!(self.b[self.i - 1], b'e' | b'E')
                    && (self.i < 2 || !is_ident_byte(self.b[self.i - 2]))
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.peek(0) {
            self.i += 1;
            if c == b'\n' {
                break;
            }
        }
    }

    fn skip_block_comment(&mut self) {
        let nested = self.dialect == Dialect::Postgres;
        let mut level = 0usize;
        while self.i < self.b.len() {
            if self.peek(0) == Some(b'/') && self.peek(1) == Some(b'*') {
                if level == 0 || nested {
                    level += 1;
                }
                self.i += 2;
            } else if self.peek(0) == Some(b'*') && self.peek(1) == Some(b'/') {
                self.i += 2;
                level = level.saturating_sub(1);
                if level == 0 {
                    return;
                }
            } else {
                self.i += 1;
            }
        }
    }

    /// Skip a quoted run starting at the cursor; a doubled quote is an escaped quote.
    fn skip_quoted(&mut self, q: u8, backslash: bool) {
        self.i += 1;
        while let Some(c) = self.peek(0) {
            if backslash && c == b'\\' {
                self.i += 2;
            } else if c == q {
                if self.peek(1) == Some(q) {
                    self.i += 2;
                } else {
                    self.i += 1;
                    return;
                }
            } else {
                self.i += 1;
            }
        }
        self.i = self.b.len();
    }

    fn skip_until(&mut self, end: u8) {
        while let Some(c) = self.peek(0) {
            self.i += 1;
            if c == end {
                return;
            }
        }
    }

    /// The `$tag$` at the cursor, if it opens a dollar quote (not `$1`, not `a$b`).
    fn dollar_tag(&self) -> Option<&'a str> {
        if self.i > 0 && is_ident_byte(self.b[self.i - 1]) {
            return None;
        }
        let start = self.i + 1;
        let mut j = start;
        while let Some(&c) = self.b.get(j) {
            if c == b'$' {
                return Some(&self.sql[self.i..=j]);
            }
            let ok = if j == start {
                c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
            } else {
                c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
            };
            if !ok {
                return None;
            }
            j += 1;
        }
        None
    }

    fn skip_dollar_quoted(&mut self) {
        let Some(tag) = self.dollar_tag() else { return };
        self.i += tag.len();
        match self.sql[self.i..].find(tag) {
            Some(pos) => self.i += pos + tag.len(),
            None => self.i = self.b.len(),
        }
    }
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(sql: &str) -> Vec<&str> {
        split_statements(sql, Dialect::Postgres)
    }

    #[test]
    fn splits_plain_statements() {
        assert_eq!(pg("select 1; select 2;\n"), ["select 1", "select 2"]);
        assert_eq!(pg("select 1"), ["select 1"]);
        assert!(pg("  -- nothing\n/* here */ ; ;").is_empty());
    }

    #[test]
    fn ignores_semicolons_in_quotes_and_comments() {
        let sql = "insert into t values ('a;b', 'it''s;'); -- c;d\n\
                   select \"we;ird\" /* x; /* nested; */ y; */ from t;\n\
                   select E'\\';', 2";
        assert_eq!(
            pg(sql),
            [
                "insert into t values ('a;b', 'it''s;')",
                "-- c;d\nselect \"we;ird\" /* x; /* nested; */ y; */ from t",
                "select E'\\';', 2",
            ]
        );
    }

    #[test]
    fn dollar_quotes_and_begin_atomic() {
        let sql = "create function f() returns int as $$ select 1; $$ language sql;\n\
                   create function g() returns int as $body$ begin; return $1; end $body$ language plpgsql;\n\
                   create function h() returns int language sql begin atomic select 1; select case when true then 2 end; end;\n\
                   create index concurrently i on t (a$b)";
        let parts = pg(sql);
        assert_eq!(parts.len(), 4, "{parts:#?}");
        assert!(parts[2].ends_with("end; end"));
        assert_eq!(parts[3], "create index concurrently i on t (a$b)");
    }

    #[test]
    fn mysql_comments_and_quotes() {
        let sql = "# c;\nselect 'a\\';b', `x;y`; --not a comment;\nselect 1 -- comment;\n";
        assert_eq!(
            split_statements(sql, Dialect::Mysql),
            [
                "# c;\nselect 'a\\';b', `x;y`",
                "--not a comment",
                "select 1 -- comment;"
            ]
        );
    }

    #[test]
    fn sqlite_trigger_bodies() {
        let sql = "create table t(a); create trigger tr after insert on t begin \
                   update t set a = case when a > 1 then 1 else 0 end; delete from t; end; select 1";
        let parts = split_statements(sql, Dialect::Sqlite);
        assert_eq!(parts.len(), 3, "{parts:#?}");
        assert!(parts[1].ends_with("delete from t; end"));
    }

    #[test]
    fn block_keywords_in_any_case_and_only_where_they_open_blocks() {
        let lite = "Create Temp Trigger tr After Insert On t Begin Update t Set a = 1; End; \
                    select 'begin'; create table b (begin int); insert into b values (1)";
        let parts = split_statements(lite, Dialect::Sqlite);
        assert_eq!(parts.len(), 4, "{parts:#?}");
        assert!(parts[0].ends_with("a = 1; End"));
        // BEGIN opens a block only directly before ATOMIC.
        let sql = "Create Function f() Returns int Language sql Begin Atomic Select 1; End;\n\
                   begin; select 1; atomic_value(); commit";
        let parts = pg(sql);
        assert_eq!(parts.len(), 5, "{parts:#?}");
        assert!(parts[0].ends_with("Select 1; End"));
        assert_eq!(parts[1], "begin");
    }

    #[test]
    fn check_clauses_of_create_table() {
        let sql = "CREATE TABLE t (a int CHECK (a > 0), b text check(length(b) < 10 and b <> ')'),\n  CONSTRAINT c CHECK ( a  <  b ))";
        assert_eq!(
            check_clauses(sql, Dialect::Sqlite),
            ["(a > 0)", "(length(b) < 10 and b <> ')')", "( a < b )"]
        );
    }

    #[test]
    fn first_keywords() {
        assert_eq!(
            first_keyword("-- x\n /* y */ Create table t()", Dialect::Postgres).as_deref(),
            Some("CREATE")
        );
        assert_eq!(
            first_keyword("/*!50001 drop view v */", Dialect::Mysql).as_deref(),
            Some("DROP")
        );
        assert_eq!(first_keyword("(select 1)", Dialect::Mysql), None);
        assert_eq!(first_keyword("  ", Dialect::Mysql), None);
    }
}
