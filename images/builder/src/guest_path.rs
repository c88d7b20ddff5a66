//! Paths in the guest, as its kernel resolves them.

/// An absolute guest path with `.`, `..` and repeated `/` resolved
/// lexically (the layer creates real folders only, so that is what the
/// guest's kernel resolves too); None for a relative path.
pub fn normalize_guest(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}
