//! User-facing errors, collected across a stage and reported together, and the typo hint they
//! share (`closest`: "did you mean ...?").

use proc_macro2::{Span, TokenStream};

/// One error on one span, with an optional hint.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub span: Span,
    pub message: String,
    pub help: Option<String>,
}

/// All errors of an expansion. Stages push into it; `expand` checks it between stages.
#[derive(Debug, Default)]
pub struct Diagnostics {
    errors: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn error(&mut self, span: Span, message: impl Into<String>) {
        self.push(Diagnostic {
            span,
            message: message.into(),
            help: None,
        });
    }

    pub fn error_help(&mut self, span: Span, message: impl Into<String>, help: impl Into<String>) {
        self.push(Diagnostic {
            span,
            message: message.into(),
            help: Some(help.into()),
        });
    }

    pub fn push(&mut self, d: Diagnostic) {
        // The same node can be visited from several functions of one block: report it once.
        let dup = self
            .errors
            .iter()
            .any(|e| e.message == d.message && format!("{:?}", e.span) == format!("{:?}", d.span));
        if !dup {
            self.errors.push(d);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `compile_error!` invocations, one per error, each on its span.
    pub fn to_compile_errors(&self) -> TokenStream {
        let mut out = TokenStream::new();
        for d in &self.errors {
            let msg = match &d.help {
                Some(h) => format!("{}\n\nhelp: {}", d.message, h),
                None => d.message.clone(),
            };
            out.extend(syn::Error::new(d.span, msg).to_compile_error());
        }
        out
    }
}

/// The candidate closest to `name` by edit distance, if close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(name, c);
        let limit = (name.len().max(c.len()) / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|b| b.1)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
