//! `--probe` specs: parsed and checked, then resolved with the image's
//! kallsyms into the probe plan. The same on both engines.

use std::path::{Path, PathBuf};

use introspect::plan::ProbePlan;
use introspect::userprobe::{check_unique_events, Base, ProbeSpec, ResolvedProbe};

/// Why a `--probe` is refused; each names the spec and its fault.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("--probe '{spec}': {why}")]
    Spec { spec: String, why: String },
    #[error("--probe '{spec}': event name `{name}` is taken by one of hvtrace's own events")]
    OwnEvent { spec: String, name: String },
    #[error("--probe '{0}': field name `valid` is reserved: hvtrace adds it to every probe event (bit i set = field i was read)")]
    ReservedField(String),
    #[error("--probe: {0}")]
    Duplicate(String),
    #[error("recovering symbols of {}", kernel.display())]
    Symbols {
        kernel: PathBuf,
        #[source]
        source: guest_symbols::image::ImageError,
    },
    #[error("--probe '{spec}': {why} (not in the kallsyms of {})", kernel.display())]
    Unresolved {
        spec: String,
        why: String,
        kernel: PathBuf,
    },
}

/// Events the TCG engine writes besides lttng-modules' (which
/// `userprobe` already refuses as probe names).
const OWN_EVENTS: [&str; 4] = [
    "x86_irq_vectors_local_timer_entry",
    "x86_irq_vectors_local_timer_exit",
    "hvtrace_sample",
    "hvtrace_trigger",
];

/// Parses the `--probe` specs (each error names the spec and its fault).
pub fn parse_probes(specs: &[String]) -> Result<Vec<(String, ProbeSpec)>, ProbeError> {
    let mut out = Vec::new();
    for s in specs {
        let p = ProbeSpec::parse(s).map_err(|e| ProbeError::Spec {
            spec: s.clone(),
            why: e.to_string(),
        })?;
        if OWN_EVENTS.contains(&p.name.as_str()) {
            return Err(ProbeError::OwnEvent {
                spec: s.clone(),
                name: p.name,
            });
        }
        if p.fields.iter().any(|f| f.name == "valid") {
            return Err(ProbeError::ReservedField(s.clone()));
        }
        out.push((s.clone(), p));
    }
    let parsed: Vec<ProbeSpec> = out.iter().map(|(_, p)| p.clone()).collect();
    check_unique_events(&parsed).map_err(|e| ProbeError::Duplicate(e.to_string()))?;
    Ok(out)
}

/// Resolves the probes' symbols with the image's kallsyms and puts the
/// probes in the plan; returns them resolved (link-time addresses).
pub fn resolve_probes(
    kernel: &Path,
    specs: &[(String, ProbeSpec)],
    plan: &mut ProbePlan,
) -> Result<Vec<ResolvedProbe>, ProbeError> {
    let mut resolved = Vec::new();
    if specs.is_empty() {
        return Ok(resolved);
    }
    let cache = image_builder::cache::root().join("symbols");
    let opts = guest_symbols::OpenOptions {
        cache_dir: Some(&cache),
        ..Default::default()
    };
    let k = guest_symbols::KernelImage::open_with(kernel, &opts).map_err(|source| {
        ProbeError::Symbols {
            kernel: kernel.to_path_buf(),
            source,
        }
    })?;
    for (text, p) in specs {
        let lookup = |s: &str| k.symbols.addr(s);
        resolved.push(p.resolve(lookup).map_err(|e| ProbeError::Unresolved {
            spec: text.clone(),
            why: e.to_string(),
            kernel: kernel.to_path_buf(),
        })?);
        let named = std::iter::once(p.symbol.as_str()).chain(p.fields.iter().filter_map(|f| {
            match &f.fetch.base {
                Base::Symbol(s) => Some(s.as_str()),
                _ => None,
            }
        }));
        for s in named {
            if let Some(a) = k.symbols.addr(s) {
                plan.user_probe_symbols.insert(s.to_string(), a);
            }
        }
        plan.user_probes.push(text.clone());
    }
    Ok(resolved)
}
