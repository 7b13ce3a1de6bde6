//! The report: each figure with its target and verdict, as a plain-text table or JSON.

use serde_json::{Value, json};

/// How a figure is judged.
#[derive(Clone, Debug)]
pub enum Target {
    /// No target: context for other figures.
    None,
    /// value ≥ bound.
    AtLeast(f64),
    /// value ≤ bound.
    AtMost(f64),
}

#[derive(Clone, Debug)]
pub struct Figure {
    /// Stable identifier for machine output.
    pub key: &'static str,
    pub label: String,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub target: Target,
    /// How the target reads in the table, e.g. "≥ 0.5 × baseline".
    pub target_text: String,
    pub note: String,
}

impl Figure {
    pub fn new(
        key: &'static str,
        label: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Figure {
            key,
            label: label.into(),
            value: Some(value),
            unit,
            target: Target::None,
            target_text: String::new(),
            note: String::new(),
        }
    }

    /// A figure that could not be measured; `why` goes into the note.
    pub fn missing(key: &'static str, label: impl Into<String>, why: impl Into<String>) -> Self {
        Figure {
            value: None,
            note: why.into(),
            ..Figure::new(key, label, 0.0, "")
        }
    }

    pub fn at_least(mut self, bound: f64, text: impl Into<String>) -> Self {
        self.target = Target::AtLeast(bound);
        self.target_text = text.into();
        self
    }

    pub fn at_most(mut self, bound: f64, text: impl Into<String>) -> Self {
        self.target = Target::AtMost(bound);
        self.target_text = text.into();
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        let note = note.into();
        if !note.is_empty() {
            if !self.note.is_empty() {
                self.note.push_str("; ");
            }
            self.note.push_str(&note);
        }
        self
    }

    /// `None` when there is no target.
    pub fn pass(&self) -> Option<bool> {
        match (&self.target, self.value) {
            (Target::None, _) => None,
            (_, None) => Some(false),
            (Target::AtLeast(b), Some(v)) => Some(v >= *b),
            (Target::AtMost(b), Some(v)) => Some(v <= *b),
        }
    }

    fn verdict(&self) -> &'static str {
        match self.pass() {
            None => "-",
            Some(true) => "PASS",
            Some(false) => "FAIL",
        }
    }

    fn value_text(&self) -> String {
        match self.value {
            None => "n/a".into(),
            Some(v) if self.unit == "×" => format!("{v:.2}×"),
            Some(v) if v >= 100.0 => format!("{} {}", thousands(v.round() as u64), self.unit),
            Some(v) => format!("{v:.2} {}", self.unit),
        }
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub struct Report {
    pub header: Vec<String>,
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = String::new();
        for h in &self.header {
            out.push_str(h);
            out.push('\n');
        }
        out.push('\n');
        let rows: Vec<[String; 4]> = std::iter::once([
            "figure".to_string(),
            "value".to_string(),
            "target".to_string(),
            "result".to_string(),
        ])
        .chain(self.figures.iter().map(|f| {
            [
                f.label.clone(),
                f.value_text(),
                f.target_text.clone(),
                f.verdict().to_string(),
            ]
        }))
        .collect();
        let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
        let widths = [width(0), width(1), width(2)];
        for row in &rows {
            let gap = |s: &str, w: usize| " ".repeat(w - s.chars().count());
            out.push_str(&format!(
                "{}{}  {}{}  {}{}  {}\n",
                row[0],
                gap(&row[0], widths[0]),
                gap(&row[1], widths[1]),
                row[1],
                row[2],
                gap(&row[2], widths[2]),
                row[3]
            ));
        }
        let notes: Vec<&Figure> = self.figures.iter().filter(|f| !f.note.is_empty()).collect();
        if !notes.is_empty() {
            out.push_str("\nnotes:\n");
            for f in notes {
                out.push_str(&format!("  {}: {}\n", f.label, f.note));
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "header": self.header,
            "figures": self.figures.iter().map(|f| json!({
                "key": f.key,
                "label": f.label,
                "value": f.value,
                "unit": f.unit,
                "target": match f.target {
                    Target::None => Value::Null,
                    Target::AtLeast(b) => json!({"min": b}),
                    Target::AtMost(b) => json!({"max": b}),
                },
                "target_text": f.target_text,
                "pass": f.pass(),
                "note": f.note,
            })).collect::<Vec<_>>(),
        })
    }
}
