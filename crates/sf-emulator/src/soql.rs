//! A SOQL subset: the lexer, the parser (with Salesforce-style `MALFORMED_QUERY` messages), field
//! binding against an object (`INVALID_FIELD`, `INVALID_TYPE`), and evaluation over the store,
//! with `WHERE SystemModstamp > X ORDER BY SystemModstamp, Id` answered by a range scan.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use chrono::NaiveDate;

use crate::store::{
    Db, F_ID, F_STAMP, FieldType, ObjectStore, Record, Slot, Val, parse_date, parse_datetime,
};

/// A query error: the REST `errorCode` and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SoqlError {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    DateTime(i64),
    Date(NaiveDate),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
    text: String,
}

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    DateTime(i64),
    Date(NaiveDate),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone)]
pub(crate) struct FieldRef {
    pub name: String,
    pub pos: usize,
    pub idx: u16,
}

#[derive(Debug, Clone)]
pub(crate) enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Cmp { field: FieldRef, op: CmpOp, lit: Lit },
    In { field: FieldRef, negated: bool, list: Vec<Lit> },
    Like { field: FieldRef, pattern: String },
    Includes { field: FieldRef, excludes: bool, list: Vec<String> },
}

#[derive(Debug, Clone)]
pub(crate) struct OrderItem {
    pub field: FieldRef,
    pub desc: bool,
    pub nulls_first: bool,
}

/// A parsed (and, after [`Query::bind`], resolved) query.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    pub count: bool,
    pub fields: Vec<FieldRef>,
    pub object: String,
    object_pos: usize,
    pub cond: Option<Cond>,
    pub order: Vec<OrderItem>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
    source: String,
}

/// The Salesforce message layout: the query, a caret under the column, the row and column.
fn located(source: &str, pos: usize, message: &str) -> String {
    let caret: String = " ".repeat(source[..pos.min(source.len())].chars().count());
    format!("\n{source}\n{caret}^\nERROR at Row:1:Column:{}\n{message}", pos + 1)
}

fn malformed(source: &str, pos: usize, message: impl AsRef<str>) -> SoqlError {
    SoqlError { code: "MALFORMED_QUERY", message: located(source, pos, message.as_ref()) }
}

fn lex(src: &str) -> Result<Vec<Token>, SoqlError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let tok = match c {
            b'(' => {
                i += 1;
                Tok::LParen
            }
            b')' => {
                i += 1;
                Tok::RParen
            }
            b',' => {
                i += 1;
                Tok::Comma
            }
            b'\'' => {
                i += 1;
                let mut s = String::new();
                let mut closed = false;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => {
                            let Some(&n) = bytes.get(i + 1) else { break };
                            s.push(match n {
                                b'n' => '\n',
                                b't' => '\t',
                                b'r' => '\r',
                                other => other as char,
                            });
                            i += 2;
                        }
                        b'\'' => {
                            closed = true;
                            i += 1;
                            break;
                        }
                        _ => {
                            let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
                            s.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                if !closed {
                    return Err(malformed(
                        src,
                        start,
                        "line 1:".to_owned()
                            + &start.to_string()
                            + " mismatched character '<EOF>' expecting '''",
                    ));
                }
                Tok::Str(s)
            }
            b'=' => {
                i += 1;
                Tok::Op("=")
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                i += 2;
                Tok::Op("!=")
            }
            b'<' => match bytes.get(i + 1) {
                Some(b'=') => {
                    i += 2;
                    Tok::Op("<=")
                }
                Some(b'>') => {
                    i += 2;
                    Tok::Op("!=")
                }
                _ => {
                    i += 1;
                    Tok::Op("<")
                }
            },
            b'>' => {
                if bytes.get(i + 1) == Some(&b'=') {
                    i += 2;
                    Tok::Op(">=")
                } else {
                    i += 1;
                    Tok::Op(">")
                }
            }
            b'0'..=b'9' | b'-' | b'+' | b'.' => {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || b"-:+.".contains(&bytes[i])) {
                    i += 1;
                }
                let text = &src[start..i];
                if text.len() >= 10 && text.as_bytes()[4] == b'-' {
                    if text.len() == 10 {
                        match parse_date(text) {
                            Some(d) => Tok::Date(d),
                            None => return Err(malformed(src, start, format!("unexpected token: {text}"))),
                        }
                    } else {
                        match parse_datetime(text) {
                            Some(t) => Tok::DateTime(t),
                            None => return Err(malformed(src, start, format!("unexpected token: {text}"))),
                        }
                    }
                } else {
                    match text.parse::<f64>() {
                        Ok(n) => Tok::Num(n),
                        Err(_) => return Err(malformed(src, start, format!("unexpected token: {text}"))),
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.')
                {
                    i += 1;
                }
                Tok::Ident(src[start..i].to_owned())
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(malformed(src, start, format!("unexpected token: '{ch}'")));
            }
        };
        out.push(Token { tok, pos: start, text: src[start..i].to_owned() });
    }
    out.push(Token { tok: Tok::Eof, pos: src.len(), text: "<EOF>".to_owned() });
    Ok(out)
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.toks[self.i.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn unexpected(&self, t: &Token) -> SoqlError {
        let shown = if t.tok == Tok::Eof { "<EOF>".to_owned() } else { t.text.clone() };
        malformed(self.src, t.pos, format!("unexpected token: {shown}"))
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), SoqlError> {
        if self.eat_kw(kw) { Ok(()) } else { Err(self.unexpected(self.peek())) }
    }

    fn expect(&mut self, tok: Tok) -> Result<(), SoqlError> {
        if self.peek().tok == tok {
            self.i += 1;
            Ok(())
        } else {
            Err(self.unexpected(self.peek()))
        }
    }

    fn field(&mut self) -> Result<FieldRef, SoqlError> {
        let t = self.next();
        match t.tok {
            Tok::Ident(name) if !is_reserved(&name) => Ok(FieldRef { name, pos: t.pos, idx: 0 }),
            _ => Err(self.unexpected(&t)),
        }
    }

    fn number(&mut self) -> Result<usize, SoqlError> {
        let t = self.next();
        match t.tok {
            Tok::Num(n) if n >= 0.0 && n.fract() == 0.0 => Ok(n as usize),
            _ => Err(self.unexpected(&t)),
        }
    }

    fn literal(&mut self) -> Result<Lit, SoqlError> {
        let t = self.next();
        Ok(match t.tok {
            Tok::Str(s) => Lit::Str(s),
            Tok::Num(n) => Lit::Num(n),
            Tok::DateTime(ms) => Lit::DateTime(ms),
            Tok::Date(d) => Lit::Date(d),
            Tok::Ident(ref s) if s.eq_ignore_ascii_case("null") => Lit::Null,
            Tok::Ident(ref s) if s.eq_ignore_ascii_case("true") => Lit::Bool(true),
            Tok::Ident(ref s) if s.eq_ignore_ascii_case("false") => Lit::Bool(false),
            _ => return Err(self.unexpected(&t)),
        })
    }

    fn list(&mut self) -> Result<Vec<Lit>, SoqlError> {
        self.expect(Tok::LParen)?;
        let mut out = vec![self.literal()?];
        while self.peek().tok == Tok::Comma {
            self.i += 1;
            out.push(self.literal()?);
        }
        self.expect(Tok::RParen)?;
        Ok(out)
    }

    fn query(&mut self) -> Result<Query, SoqlError> {
        self.expect_kw("SELECT")?;
        let mut count = false;
        let mut fields = Vec::new();
        if self.is_kw("COUNT") && self.toks.get(self.i + 1).is_some_and(|t| t.tok == Tok::LParen) {
            self.i += 1;
            self.expect(Tok::LParen)?;
            self.expect(Tok::RParen)?;
            count = true;
        } else {
            fields.push(self.field()?);
            while self.peek().tok == Tok::Comma {
                self.i += 1;
                fields.push(self.field()?);
            }
        }
        self.expect_kw("FROM")?;
        let t = self.next();
        let object = match t.tok {
            Tok::Ident(name) if !is_reserved(&name) => name,
            _ => return Err(self.unexpected(&t)),
        };
        let mut q = Query {
            count,
            fields,
            object,
            object_pos: t.pos,
            cond: None,
            order: Vec::new(),
            limit: None,
            offset: None,
            source: self.src.to_owned(),
        };
        if self.eat_kw("WHERE") {
            q.cond = Some(self.condition()?);
        }
        if self.eat_kw("ORDER") {
            self.expect_kw("BY")?;
            loop {
                let field = self.field()?;
                let desc = if self.eat_kw("DESC") {
                    true
                } else {
                    self.eat_kw("ASC");
                    false
                };
                let mut nulls_first = !desc;
                if self.eat_kw("NULLS") {
                    if self.eat_kw("FIRST") {
                        nulls_first = true;
                    } else if self.eat_kw("LAST") {
                        nulls_first = false;
                    } else {
                        return Err(self.unexpected(self.peek()));
                    }
                }
                q.order.push(OrderItem { field, desc, nulls_first });
                if self.peek().tok == Tok::Comma {
                    self.i += 1;
                } else {
                    break;
                }
            }
        }
        if self.eat_kw("LIMIT") {
            q.limit = Some(self.number()?);
        }
        if self.eat_kw("OFFSET") {
            let t = self.peek().clone();
            let n = self.number()?;
            if n > 2000 {
                return Err(SoqlError {
                    code: "NUMBER_OUTSIDE_VALID_RANGE",
                    message: located(self.src, t.pos, "Maximum SOQL offset allowed is 2000"),
                });
            }
            q.offset = Some(n);
        }
        if self.peek().tok != Tok::Eof {
            return Err(self.unexpected(self.peek()));
        }
        Ok(q)
    }

    /// `a AND b AND c` or `a OR b OR c`; mixing them needs parentheses, as in SOQL.
    fn condition(&mut self) -> Result<Cond, SoqlError> {
        let first = self.unary()?;
        if self.is_kw("AND") {
            let mut all = vec![first];
            while self.eat_kw("AND") {
                all.push(self.unary()?);
            }
            if self.is_kw("OR") {
                return Err(self.unexpected(self.peek()));
            }
            Ok(Cond::And(all))
        } else if self.is_kw("OR") {
            let mut any = vec![first];
            while self.eat_kw("OR") {
                any.push(self.unary()?);
            }
            if self.is_kw("AND") {
                return Err(self.unexpected(self.peek()));
            }
            Ok(Cond::Or(any))
        } else {
            Ok(first)
        }
    }

    fn unary(&mut self) -> Result<Cond, SoqlError> {
        if self.eat_kw("NOT") {
            return Ok(Cond::Not(Box::new(self.unary()?)));
        }
        if self.peek().tok == Tok::LParen {
            self.i += 1;
            let c = self.condition()?;
            self.expect(Tok::RParen)?;
            return Ok(c);
        }
        let field = self.field()?;
        if self.eat_kw("NOT") {
            self.expect_kw("IN")?;
            return Ok(Cond::In { field, negated: true, list: self.list()? });
        }
        if self.eat_kw("IN") {
            return Ok(Cond::In { field, negated: false, list: self.list()? });
        }
        if self.eat_kw("LIKE") {
            let t = self.next();
            return match t.tok {
                Tok::Str(pattern) => Ok(Cond::Like { field, pattern }),
                _ => Err(self.unexpected(&t)),
            };
        }
        for (kw, excludes) in [("INCLUDES", false), ("EXCLUDES", true)] {
            if self.eat_kw(kw) {
                let list = self.list()?;
                let mut values = Vec::new();
                for lit in list {
                    match lit {
                        Lit::Str(s) => values.push(s),
                        _ => return Err(self.unexpected(&self.toks[self.i - 1].clone())),
                    }
                }
                return Ok(Cond::Includes { field, excludes, list: values });
            }
        }
        let t = self.next();
        let op = match t.tok {
            Tok::Op("=") => CmpOp::Eq,
            Tok::Op("!=") => CmpOp::Ne,
            Tok::Op("<") => CmpOp::Lt,
            Tok::Op("<=") => CmpOp::Le,
            Tok::Op(">") => CmpOp::Gt,
            Tok::Op(">=") => CmpOp::Ge,
            _ => return Err(self.unexpected(&t)),
        };
        let lit = self.literal()?;
        Ok(Cond::Cmp { field, op, lit })
    }
}

fn is_reserved(word: &str) -> bool {
    const RESERVED: &[&str] = &[
        "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "LIMIT", "OFFSET",
        "NULL", "TRUE", "FALSE", "ASC", "DESC", "NULLS", "INCLUDES", "EXCLUDES",
    ];
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

/// Parses a SOQL query (syntax only).
pub(crate) fn parse(src: &str) -> Result<Query, SoqlError> {
    let toks = lex(src)?;
    Parser { src, toks, i: 0 }.query()
}

impl Query {
    /// Resolves the object and every field, and checks filter literals against field types.
    pub fn bind(&mut self, db: &Db) -> Result<usize, SoqlError> {
        let Some(oi) = db.object_index(&self.object) else {
            return Err(SoqlError {
                code: "INVALID_TYPE",
                message: located(
                    &self.source,
                    self.object_pos,
                    &format!(
                        "sObject type '{}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names.",
                        self.object
                    ),
                ),
            });
        };
        let obj = &db.objects[oi];
        let source = self.source.clone();
        let resolve = |f: &mut FieldRef| -> Result<(), SoqlError> {
            match obj.field(&f.name) {
                Some(idx) => {
                    f.idx = idx;
                    Ok(())
                }
                None => Err(SoqlError {
                    code: "INVALID_FIELD",
                    message: located(
                        &source,
                        f.pos,
                        &format!(
                            "No such column '{}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.",
                            f.name, obj.name
                        ),
                    ),
                }),
            }
        };
        for f in &mut self.fields {
            resolve(f)?;
        }
        if let Some(c) = &mut self.cond {
            bind_cond(c, obj, &resolve, &source)?;
        }
        for o in &mut self.order {
            resolve(&mut o.field)?;
        }
        Ok(oi)
    }
}

fn bind_cond(
    c: &mut Cond,
    obj: &ObjectStore,
    resolve: &dyn Fn(&mut FieldRef) -> Result<(), SoqlError>,
    source: &str,
) -> Result<(), SoqlError> {
    match c {
        Cond::And(cs) | Cond::Or(cs) => {
            for c in cs {
                bind_cond(c, obj, resolve, source)?;
            }
            Ok(())
        }
        Cond::Not(c) => bind_cond(c, obj, resolve, source),
        Cond::Cmp { field, lit, .. } => {
            resolve(field)?;
            check_lit(field, lit, obj, source)
        }
        Cond::In { field, list, .. } => {
            resolve(field)?;
            list.iter().try_for_each(|lit| check_lit(field, lit, obj, source))
        }
        Cond::Like { field, .. } | Cond::Includes { field, .. } => resolve(field),
    }
}

/// Salesforce rejects a literal of the wrong type for a typed field.
fn check_lit(field: &FieldRef, lit: &Lit, obj: &ObjectStore, source: &str) -> Result<(), SoqlError> {
    let ty = obj.fields.get(field.idx as usize).map(|f| f.ty).unwrap_or(FieldType::Any);
    let name = obj.fields.get(field.idx as usize).map(|f| f.name.as_str()).unwrap_or(&field.name);
    let expected = match (ty, lit) {
        (_, Lit::Null) => None,
        (FieldType::DateTime, Lit::DateTime(_)) => None,
        (FieldType::DateTime, _) => Some("dateTime"),
        (FieldType::Date, Lit::Date(_)) => None,
        (FieldType::Date, _) => Some("date"),
        (FieldType::Bool, Lit::Bool(_)) => None,
        (FieldType::Bool, _) => Some("boolean"),
        (FieldType::Int, Lit::Num(_)) => None,
        (FieldType::Int, _) => Some("double"),
        (FieldType::Text | FieldType::Id | FieldType::Reference, Lit::Str(_)) => None,
        (FieldType::Text | FieldType::Id | FieldType::Reference, _) => Some("string"),
        (FieldType::Any, _) => None,
    };
    match expected {
        None => Ok(()),
        Some(t) => {
            let quoting = if t == "string" {
                "should be enclosed in quotes"
            } else {
                "should not be enclosed in quotes"
            };
            Err(SoqlError {
                code: "INVALID_FIELD",
                message: located(
                    source,
                    field.pos,
                    &format!(
                        "value of filter criterion for field '{name}' must be of type {t} and {quoting}"
                    ),
                ),
            })
        }
    }
}

fn cmp_ci(a: &str, b: &str) -> Ordering {
    a.bytes().map(|c| c.to_ascii_lowercase()).cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

/// Compares a record value with a literal; `None` when they are not comparable.
fn compare(v: Val<'_>, lit: &Lit) -> Option<Ordering> {
    match (v, lit) {
        (Val::Str(s), Lit::Str(l)) => Some(cmp_ci(s, l)),
        (Val::Int(i), Lit::Num(n)) => (i as f64).partial_cmp(n),
        (Val::Float(f), Lit::Num(n)) => f.partial_cmp(n),
        (Val::Bool(b), Lit::Bool(l)) => Some(b.cmp(l)),
        (Val::Time(t), Lit::DateTime(l)) => Some(t.cmp(l)),
        (Val::Str(s), Lit::DateTime(l)) => parse_datetime(s).map(|t| t.cmp(l)),
        (Val::Str(s), Lit::Date(d)) => parse_date(s).map(|x| x.cmp(d)),
        (Val::Time(t), Lit::Date(d)) => {
            let day = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(t)?.date_naive();
            Some(day.cmp(d))
        }
        (Val::Str(s), Lit::Num(n)) => s.parse::<f64>().ok().and_then(|x| x.partial_cmp(n)),
        (Val::Str(s), Lit::Bool(b)) => {
            Some(s.eq_ignore_ascii_case(if *b { "true" } else { "false" }).cmp(&true))
        }
        _ => None,
    }
}

fn matches_eq(v: Val<'_>, lit: &Lit) -> bool {
    match lit {
        Lit::Null => v == Val::Null,
        _ => compare(v, lit) == Some(Ordering::Equal),
    }
}

/// SOQL `LIKE`: case-insensitive, `%` any run, `_` one character.
fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let (mut ti, mut pi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || (p[pi] != '%' && p[pi] == t[ti])) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '%' {
        pi += 1;
    }
    pi == p.len()
}

pub(crate) fn eval(c: &Cond, rec: &Record) -> bool {
    match c {
        Cond::And(cs) => cs.iter().all(|c| eval(c, rec)),
        Cond::Or(cs) => cs.iter().any(|c| eval(c, rec)),
        Cond::Not(c) => !eval(c, rec),
        Cond::Cmp { field, op, lit } => {
            let v = rec.get(field.idx);
            match op {
                CmpOp::Eq => matches_eq(v, lit),
                CmpOp::Ne => !matches_eq(v, lit),
                _ => {
                    if v == Val::Null || *lit == Lit::Null {
                        return false;
                    }
                    match compare(v, lit) {
                        Some(o) => match op {
                            CmpOp::Lt => o == Ordering::Less,
                            CmpOp::Le => o != Ordering::Greater,
                            CmpOp::Gt => o == Ordering::Greater,
                            _ => o != Ordering::Less,
                        },
                        None => false,
                    }
                }
            }
        }
        Cond::In { field, negated, list } => {
            let v = rec.get(field.idx);
            list.iter().any(|l| matches_eq(v, l)) != *negated
        }
        Cond::Like { field, pattern } => match rec.get(field.idx) {
            Val::Str(s) => like(s, pattern),
            _ => false,
        },
        Cond::Includes { field, excludes, list } => {
            let hit = match rec.get(field.idx) {
                Val::Str(s) => {
                    s.split(';').any(|part| list.iter().any(|l| part.trim().eq_ignore_ascii_case(l)))
                }
                _ => false,
            };
            hit != *excludes
        }
    }
}

/// Total order of values for `ORDER BY` (nulls handled by the caller).
fn order_vals(a: Val<'_>, b: Val<'_>) -> Ordering {
    match (a, b) {
        (Val::Str(x), Val::Str(y)) => cmp_ci(x, y).then_with(|| x.cmp(y)),
        (Val::Int(x), Val::Int(y)) => x.cmp(&y),
        (Val::Int(x), Val::Float(y)) => (x as f64).total_cmp(&y),
        (Val::Float(x), Val::Int(y)) => x.total_cmp(&(y as f64)),
        (Val::Float(x), Val::Float(y)) => x.total_cmp(&y),
        (Val::Bool(x), Val::Bool(y)) => x.cmp(&y),
        (Val::Time(x), Val::Time(y)) => x.cmp(&y),
        (Val::Json(x), Val::Json(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// The `(SystemModstamp)` range implied by top-level conjuncts of the filter.
fn stamp_range(cond: Option<&Cond>) -> (Bound<i64>, Bound<i64>) {
    let mut lo = Bound::Unbounded;
    let mut hi = Bound::Unbounded;
    let mut tighten = |c: &Cond| {
        if let Cond::Cmp { field, op, lit: Lit::DateTime(t) } = c
            && field.idx == F_STAMP
        {
            let t = *t;
            match op {
                CmpOp::Gt => lo = max_lo(lo, t + 1),
                CmpOp::Ge => lo = max_lo(lo, t),
                CmpOp::Lt => hi = min_hi(hi, t),
                CmpOp::Le => hi = min_hi(hi, t + 1),
                CmpOp::Eq => {
                    lo = max_lo(lo, t);
                    hi = min_hi(hi, t + 1);
                }
                CmpOp::Ne => {}
            }
        }
    };
    match cond {
        Some(Cond::And(cs)) => cs.iter().for_each(&mut tighten),
        Some(c) => tighten(c),
        None => {}
    }
    (lo, hi)
}

fn max_lo(cur: Bound<i64>, t: i64) -> Bound<i64> {
    match cur {
        Bound::Included(x) if x >= t => cur,
        _ => Bound::Included(t),
    }
}

fn min_hi(cur: Bound<i64>, t: i64) -> Bound<i64> {
    match cur {
        Bound::Excluded(x) if x <= t => cur,
        _ => Bound::Excluded(t),
    }
}

/// Runs a bound query over object `oi`: the matching slots, in order, after OFFSET and LIMIT.
pub(crate) fn execute(db: &Db, oi: usize, q: &Query) -> Vec<Slot> {
    let obj = &db.objects[oi];
    // The index order is (SystemModstamp, Id): no ORDER BY, or ORDER BY SystemModstamp [, Id] ascending.
    let index_order = match q.order.as_slice() {
        [] => true,
        [a] => a.field.idx == F_STAMP && !a.desc,
        [a, b] => a.field.idx == F_STAMP && !a.desc && b.field.idx == F_ID && !b.desc,
        _ => false,
    };
    let (lo, hi) = stamp_range(q.cond.as_ref());
    let empty: Arc<str> = Arc::from("");
    let lo_key = match lo {
        Bound::Included(t) => Bound::Included((t, empty.clone())),
        _ => Bound::Unbounded,
    };
    let hi_key = match hi {
        Bound::Excluded(t) => Bound::Excluded((t, empty)),
        _ => Bound::Unbounded,
    };
    if let (Bound::Included((a, _)), Bound::Excluded((b, _))) = (&lo_key, &hi_key)
        && a >= b
    {
        return Vec::new();
    }
    let offset = q.offset.unwrap_or(0);
    let wanted = if index_order { q.limit.map(|l| l.saturating_add(offset)) } else { None };
    let mut out = Vec::new();
    for (_, &slot) in obj.index.range((lo_key, hi_key)) {
        let Some(rec) = obj.record(slot) else { continue };
        if q.cond.as_ref().is_none_or(|c| eval(c, rec)) {
            out.push(slot);
            if wanted.is_some_and(|w| out.len() >= w) {
                break;
            }
        }
    }
    if !index_order {
        out.sort_by(|&a, &b| {
            let (Some(ra), Some(rb)) = (obj.record(a), obj.record(b)) else { return Ordering::Equal };
            for o in &q.order {
                let (va, vb) = (ra.get(o.field.idx), rb.get(o.field.idx));
                let ord = match (va == Val::Null, vb == Val::Null) {
                    (true, true) => Ordering::Equal,
                    (true, false) => {
                        if o.nulls_first {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    }
                    (false, true) => {
                        if o.nulls_first {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        }
                    }
                    (false, false) => {
                        let ord = order_vals(va, vb);
                        if o.desc { ord.reverse() } else { ord }
                    }
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            ra.id.cmp(&rb.id)
        });
    }
    let start = offset.min(out.len());
    let end = q.limit.map_or(out.len(), |l| start.saturating_add(l).min(out.len()));
    if start == 0 && end == out.len() { out } else { out[start..end].to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index range scan returns exactly what evaluating the filter on every record does.
    #[test]
    fn range_scans_agree_with_full_evaluation() {
        let mut db = Db::new();
        let base = 1_700_000_000_000i64;
        for i in 0..60i64 {
            let mut m = serde_json::Map::new();
            m.insert("LastName".into(), serde_json::Value::from(format!("L{}", i % 7)));
            db.insert("Lead", m, base + (i / 3) * 1000);
        }
        let at = |ms: i64| crate::store::format_datetime(base + ms);
        let filters = [
            format!("SystemModstamp > {}", at(5000)),
            format!("SystemModstamp >= {}", at(5000)),
            format!("SystemModstamp < {}", at(5000)),
            format!("SystemModstamp <= {}", at(5000)),
            format!("SystemModstamp = {}", at(7000)),
            format!("SystemModstamp > {} AND SystemModstamp <= {}", at(2500), at(9000)),
            format!("SystemModstamp > {} AND SystemModstamp < {}", at(9000), at(2000)),
            format!("SystemModstamp > {} AND LastName = 'L3'", at(1000)),
            format!("SystemModstamp > {} OR LastName = 'L3'", at(15000)),
            format!("NOT SystemModstamp > {}", at(4000)),
        ];
        for filter in filters {
            for tail in ["", " ORDER BY SystemModstamp, Id", " ORDER BY SystemModstamp, Id LIMIT 4 OFFSET 2"]
            {
                let src = format!("SELECT Id FROM Lead WHERE {filter}{tail}");
                let mut q = parse(&src).expect("parse");
                let oi = q.bind(&db).expect("bind");
                let got = execute(&db, oi, &q);
                let obj = &db.objects[oi];
                let cond = q.cond.clone().expect("cond");
                let all: Vec<Slot> = obj
                    .index
                    .values()
                    .copied()
                    .filter(|&s| obj.record(s).is_some_and(|r| eval(&cond, r)))
                    .collect();
                let want: Vec<Slot> = match (q.offset, q.limit) {
                    (Some(o), Some(l)) => all.into_iter().skip(o).take(l).collect(),
                    _ => all,
                };
                assert_eq!(got, want, "{src}");
            }
        }
    }

    #[test]
    fn like_patterns() {
        assert!(like("Acme Corp", "%corp"));
        assert!(like("Acme Corp", "a_me%"));
        assert!(like("abc", "%"));
        assert!(!like("abc", "%d%"));
        assert!(like("", "%"));
    }

    #[test]
    fn and_or_mixing_needs_parentheses() {
        let err = parse("SELECT Id FROM Lead WHERE Email = 'a' AND Status = 'b' OR Rating = 'c'")
            .expect_err("mixed");
        assert_eq!(err.code, "MALFORMED_QUERY");
        assert!(err.message.contains("unexpected token: OR"), "{}", err.message);
        assert!(parse("SELECT Id FROM Lead WHERE Email = 'a' AND (Status = 'b' OR Rating = 'c')").is_ok());
    }

    #[test]
    fn error_message_points_at_the_column() {
        let err = parse("SELECT Id FROM Lead WHERE").expect_err("eof");
        assert_eq!(
            err.message,
            "\nSELECT Id FROM Lead WHERE\n                         ^\nERROR at Row:1:Column:26\nunexpected token: <EOF>"
        );
    }
}
