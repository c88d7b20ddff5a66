//! Where hvtrace keeps what it fetches and builds: `$HVTRACE_CACHE`, else
//! `.cache/` in the source tree (ignored by git).

use std::path::{Path, PathBuf};

/// The cache root, created on first use by whoever writes into it.
pub fn root() -> PathBuf {
    match std::env::var_os("HVTRACE_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => source_tree().join(".cache"),
    }
}

/// hvtrace's source tree (the workspace root), where the workload
/// programs and `scripts/` are.
pub fn source_tree() -> &'static Path {
    // This crate is `images/builder/` in the workspace.
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).unwrap_or(here)
}

/// Hex SHA-256 of a byte string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a file's contents.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    Ok(sha256_hex(&std::fs::read(path)?))
}

/// Like [`sha256_file`] for large immutable inputs (downloaded packages):
/// the digest is kept beside the file so the next build does not re-read it.
pub fn sha256_file_memo(path: &std::path::Path) -> std::io::Result<String> {
    let memo = path.with_extension("sha256");
    let meta = std::fs::metadata(path)?;
    if let Ok(text) = std::fs::read_to_string(&memo) {
        if let Some((size, digest)) = text.trim().split_once(' ') {
            if size == meta.len().to_string() && digest.len() == 64 {
                return Ok(digest.to_string());
            }
        }
    }
    let digest = sha256_file(path)?;
    std::fs::write(&memo, format!("{} {digest}\n", meta.len()))?;
    Ok(digest)
}
