//! User-facing errors, collected across a stage and reported together.

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
