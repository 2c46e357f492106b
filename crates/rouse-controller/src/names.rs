//! Names of generated children, as Knative derives them.

/// Longest Kubernetes object name.
const MAX_NAME: usize = 63;

/// `parent` + `suffix`, shortened with a hash when longer than 63 characters (Knative's
/// `kmeta.ChildName` does the same with md5; any stable hash keeps names unique enough).
pub fn child_name(parent: &str, suffix: &str) -> String {
    let full = format!("{parent}{suffix}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = format!("{:016x}", fnv1a64(full.as_bytes()));
    let keep = MAX_NAME - hash.len();
    let mut prefix: String = parent.chars().take(keep).collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    format!("{prefix}{hash}")
}

/// The controller-generated revision name: `{config}-{generation:05}`.
pub fn revision_name(configuration: &str, generation: i64) -> String {
    child_name(configuration, &format!("-{generation:05}"))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_names() {
        assert_eq!(revision_name("hello", 1), "hello-00001");
        assert_eq!(revision_name("hello", 123456), "hello-123456");
        let long = "a".repeat(70);
        let n = revision_name(&long, 1);
        assert!(n.len() <= 63, "{n}");
        assert_ne!(n, revision_name(&long, 2));
    }
}
