//! Secret templates (`spec.secret.template`), written by tenants and rendered by the operator:
//! a bounded subset of Jinja on minijinja. Pure.
//!
//! A template can only make output about as large as itself times the largest value it reads:
//! it is parsed first, and only `{{ … }}`, `{% if %}`, literals, comparisons, `and`/`or`/`not`,
//! attribute and item lookups and the filters below are accepted. Loops, assignments, macros,
//! function calls and the operators that build strings (`~`, `+`, `*`) are refused, so nothing
//! repeats or compounds. Each filter's result is at most [`VALUE_LIMIT`], each rendered value
//! too (the writer stops there), and minijinja's fuel caps the instructions run. The whole
//! Secret is checked against [`SECRET_LIMIT`] by the caller.

use std::collections::BTreeMap;

use minijinja::machinery::ast::{BinOpKind, CallArg, Expr, Stmt};
use minijinja::machinery::{WhitespaceConfig, parse};
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error as JinjaError, ErrorKind, UndefinedBehavior, Value};

/// The most bytes one rendered template value (and any filter result) may hold.
pub const VALUE_LIMIT: usize = 64 * 1024;
/// The most bytes a whole Secret may hold (keys and values): Kubernetes' own limit.
pub const SECRET_LIMIT: usize = 1024 * 1024;
/// Instructions one template may run (minijinja fuel); a 4 KiB template needs a few hundred.
const FUEL: u64 = 20_000;
/// The filters a template may use; each is bounded by VALUE_LIMIT.
pub const FILTERS: [&str; 7] = [
    "default",
    "lower",
    "replace",
    "trim",
    "upper",
    "urlencode",
    "length",
];

/// Why a template was refused or could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template uses something outside the bounded subset.
    #[error("secret.template[{key:?}]: {what} is not allowed in templates; use {{{{ variable | filter }}}}, {{% if %}} and literals (filters: {filters})", filters = FILTERS.join(", "))]
    NotAllowed { key: String, what: String },
    /// The template is not valid Jinja, or failed while rendering.
    #[error("secret.template[{key:?}]: {message}")]
    Invalid { key: String, message: String },
    /// Rendering went past a bound.
    #[error("secret.template[{key:?}]: {message}")]
    TooLarge { key: String, message: String },
    /// The template names one of dbconn's own keys.
    #[error(
        "secret.template[{key:?}]: a template cannot replace one of dbconn's own keys; choose another name"
    )]
    ReservedKey { key: String },
}

impl TemplateError {
    /// The condition reason: bounds have their own, so they read apart from typos.
    pub fn reason(&self) -> &'static str {
        match self {
            TemplateError::TooLarge { .. } => "TemplateTooLarge",
            TemplateError::NotAllowed { .. } => "TemplateNotAllowed",
            TemplateError::Invalid { .. } | TemplateError::ReservedKey { .. } => "TemplateInvalid",
        }
    }

    /// The template's key.
    pub fn key(&self) -> &str {
        match self {
            TemplateError::NotAllowed { key, .. }
            | TemplateError::Invalid { key, .. }
            | TemplateError::TooLarge { key, .. }
            | TemplateError::ReservedKey { key } => key,
        }
    }
}

/// Renders every template over `vars`. Pure; bounded in time and memory whatever the input.
pub fn render_all(
    templates: &BTreeMap<String, String>,
    vars: &BTreeMap<&'static str, Value>,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let env = environment();
    templates
        .iter()
        .map(|(key, source)| Ok((key.clone(), render_one(&env, key, source, vars)?)))
        .collect()
}

fn environment() -> Environment<'static> {
    // empty(): no global functions (range, …), tests or filters but the bounded ones here.
    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.add_filter("default", |v: Value, fallback: Option<Value>| -> Value {
        if v.is_undefined() || v.is_none() {
            fallback.unwrap_or_else(|| Value::from(""))
        } else {
            v
        }
    });
    env.add_filter("lower", |s: &str| bounded(s.to_lowercase()));
    env.add_filter("upper", |s: &str| bounded(s.to_uppercase()));
    env.add_filter("trim", |s: &str| s.trim().to_owned());
    env.add_filter("length", |v: Value| v.len().unwrap_or(0));
    env.add_filter("replace", |s: &str, from: &str, to: &str| {
        // The exact length, before building it (an empty `from` matches between every char).
        let n = s.matches(from).count();
        let len = (s.len() - n * from.len()).saturating_add(n.saturating_mul(to.len()));
        if len > VALUE_LIMIT {
            return Err(too_large());
        }
        Ok(s.replace(from, to))
    });
    env.add_filter("urlencode", |s: &str| {
        bounded(
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        )
    });
    env
}

fn too_large() -> JinjaError {
    JinjaError::new(
        ErrorKind::InvalidOperation,
        format!("a value would exceed {VALUE_LIMIT} bytes"),
    )
}

fn bounded(s: String) -> Result<String, JinjaError> {
    if s.len() > VALUE_LIMIT {
        Err(too_large())
    } else {
        Ok(s)
    }
}

fn render_one(
    env: &Environment<'static>,
    key: &str,
    source: &str,
    vars: &BTreeMap<&'static str, Value>,
) -> Result<String, TemplateError> {
    let invalid = |e: JinjaError| TemplateError::Invalid {
        key: key.to_owned(),
        message: e.to_string(),
    };
    let tree = parse(source, key, SyntaxConfig, WhitespaceConfig::default()).map_err(invalid)?;
    allowed_stmt(&tree).map_err(|what| TemplateError::NotAllowed {
        key: key.to_owned(),
        what,
    })?;
    let template = env.template_from_str(source).map_err(invalid)?;
    let mut out = Capped::default();
    match template.render_captured_to(vars, &mut out) {
        Ok(_) => Ok(String::from_utf8_lossy(&out.bytes).into_owned()),
        Err(e) if out.overflowed || e.to_string().contains("exceed") => {
            Err(TemplateError::TooLarge {
                key: key.to_owned(),
                message: format!("the rendered value would exceed {VALUE_LIMIT} bytes"),
            })
        }
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(TemplateError::TooLarge {
            key: key.to_owned(),
            message: format!("rendering took more than {FUEL} steps"),
        }),
        Err(e) => Err(invalid(e)),
    }
}

/// A writer that refuses to grow past VALUE_LIMIT.
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > VALUE_LIMIT {
            self.overflowed = true;
            return Err(std::io::Error::other("value too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Ok when a statement (and everything in it) is in the bounded subset; else what is not.
fn allowed_stmt(stmt: &Stmt<'_>) -> Result<(), String> {
    match stmt {
        Stmt::Template(t) => t.children.iter().try_for_each(allowed_stmt),
        Stmt::EmitRaw(_) => Ok(()),
        Stmt::EmitExpr(e) => allowed_expr(&e.expr),
        Stmt::IfCond(c) => {
            allowed_expr(&c.expr)?;
            c.true_body
                .iter()
                .chain(&c.false_body)
                .try_for_each(allowed_stmt)
        }
        Stmt::ForLoop(_) => Err("{% for %}".into()),
        Stmt::Set(_) | Stmt::SetBlock(_) => Err("{% set %}".into()),
        Stmt::WithBlock(_) => Err("{% with %}".into()),
        Stmt::FilterBlock(_) => Err("{% filter %}".into()),
        Stmt::AutoEscape(_) => Err("{% autoescape %}".into()),
        Stmt::Do(_) => Err("{% do %}".into()),
        #[allow(unreachable_patterns)]
        _ => Err("this statement".into()),
    }
}

fn allowed_expr(expr: &Expr<'_>) -> Result<(), String> {
    match expr {
        Expr::Var(_) | Expr::Const(_) => Ok(()),
        Expr::UnaryOp(u) => allowed_expr(&u.expr),
        Expr::BinOp(b) => match b.op {
            BinOpKind::Eq
            | BinOpKind::Ne
            | BinOpKind::Lt
            | BinOpKind::Lte
            | BinOpKind::Gt
            | BinOpKind::Gte
            | BinOpKind::ScAnd
            | BinOpKind::ScOr
            | BinOpKind::In => {
                allowed_expr(&b.left)?;
                allowed_expr(&b.right)
            }
            BinOpKind::Concat => Err("the ~ operator (write {{ a }}{{ b }} instead)".into()),
            _ => Err("arithmetic (+, -, *, /, %, **)".into()),
        },
        Expr::Compare(c) => {
            allowed_expr(&c.expr)?;
            c.ops.iter().try_for_each(|o| allowed_expr(&o.expr))
        }
        Expr::IfExpr(i) => {
            allowed_expr(&i.test_expr)?;
            allowed_expr(&i.true_expr)?;
            i.false_expr.as_ref().map_or(Ok(()), allowed_expr)
        }
        Expr::Filter(f) => {
            if !FILTERS.contains(&f.name) {
                return Err(format!("the filter {:?}", f.name));
            }
            f.expr.as_ref().map_or(Ok(()), allowed_expr)?;
            allowed_args(&f.args)
        }
        Expr::Test(t) => Err(format!("the test {:?}", t.name)),
        Expr::GetAttr(g) => allowed_expr(&g.expr),
        Expr::GetItem(g) => {
            allowed_expr(&g.expr)?;
            allowed_expr(&g.subscript_expr)
        }
        Expr::Slice(s) => {
            allowed_expr(&s.expr)?;
            [&s.start, &s.stop, &s.step]
                .into_iter()
                .flatten()
                .try_for_each(allowed_expr)
        }
        Expr::Call(_) => Err("a function call".into()),
        Expr::List(l) => l.items.iter().try_for_each(allowed_expr),
        Expr::Map(m) => m.keys.iter().chain(&m.values).try_for_each(allowed_expr),
    }
}

fn allowed_args(args: &[CallArg<'_>]) -> Result<(), String> {
    args.iter().try_for_each(|a| match a {
        CallArg::Pos(e) | CallArg::Kwarg(_, e) => allowed_expr(e),
        CallArg::PosSplat(_) | CallArg::KwargSplat(_) => Err("argument splats (*args)".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<&'static str, Value> {
        BTreeMap::from([
            ("uri", Value::from("postgresql://app:pw@db:5432/orders")),
            ("host", Value::from("db")),
            ("port", Value::from(5432)),
            ("password", Value::from("p@ss w/rd")),
        ])
    }

    fn one(source: &str) -> Result<String, TemplateError> {
        let t = BTreeMap::from([("K".to_owned(), source.to_owned())]);
        render_all(&t, &vars()).map(|mut m| m.remove("K").unwrap_or_default())
    }

    #[test]
    fn variables_filters_and_conditions_render() {
        assert_eq!(
            one("{{ uri }}").unwrap(),
            "postgresql://app:pw@db:5432/orders"
        );
        assert_eq!(
            one("host={{ host }} port={{ port }}").unwrap(),
            "host=db port=5432"
        );
        assert_eq!(
            one("{{ password | urlencode }}").unwrap(),
            "p%40ss%20w%2Frd"
        );
        assert_eq!(
            one("{{ uri | replace('postgresql://', 'postgres://') | upper }}").unwrap(),
            "POSTGRES://APP:PW@DB:5432/ORDERS"
        );
        assert_eq!(
            one("{% if port == 5432 %}default{% else %}other{% endif %}").unwrap(),
            "default"
        );
        assert_eq!(one("{{ host if port > 1 else 'x' }}").unwrap(), "db");
    }

    #[test]
    fn loops_assignments_calls_and_string_building_are_refused() {
        for (source, what) in [
            ("{% for i in [1, 2] %}x{% endfor %}", "{% for %}"),
            ("{% set s = uri %}{{ s }}", "{% set %}"),
            ("{{ uri ~ uri }}", "~"),
            ("{{ 'x' * 100000000 }}", "arithmetic"),
            ("{{ uri + uri }}", "arithmetic"),
            ("{{ range(10) }}", "function call"),
            ("{{ uri | indent(1000000) }}", "\"indent\""),
            ("{{ uri is defined }}", "test"),
            ("{% macro m() %}x{% endmacro %}", ""),
        ] {
            let err = one(source).unwrap_err();
            assert!(
                matches!(
                    err,
                    TemplateError::NotAllowed { .. } | TemplateError::Invalid { .. }
                ),
                "{source}: {err}"
            );
            assert!(err.to_string().contains(what), "{source}: {err}");
        }
    }

    #[test]
    fn values_past_the_bounds_fail_with_their_own_reason() {
        // Each replace multiplies; the bound stops it at the first step past 64 KiB.
        let mut source = "{{ uri".to_owned();
        for _ in 0..12 {
            source.push_str(" | replace('', uri)");
        }
        source.push_str(" }}");
        let err = one(&source).unwrap_err();
        assert_eq!(err.reason(), "TemplateTooLarge", "{err}");
        // Many emits of a large value stop at the writer's bound.
        let big = format!("{{{{ uri | replace('', '{}') }}}}", "y".repeat(1000));
        let err = one(&big.repeat(4)).unwrap_err();
        assert_eq!(err.reason(), "TemplateTooLarge", "{err}");
    }

    #[test]
    fn mistakes_name_the_key() {
        let err = one("{{ nope }}").unwrap_err();
        assert_eq!(err.key(), "K");
        assert_eq!(err.reason(), "TemplateInvalid");
        let err = one("{{ unclosed").unwrap_err();
        assert_eq!(err.reason(), "TemplateInvalid");
    }
}
