/// A parsed `If-Match` header. Entity tags are the resource's version, so a
/// strong tag `"7"` matches version 7; weak or foreign tags never match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `If-Match: *`: any current version.
    Any,
    /// The versions listed; an empty list matches nothing.
    Versions(Vec<i64>),
}

impl IfMatch {
    /// Parses the header's comma-separated list of entity tags.
    pub fn parse(header: &str) -> Self {
        if header.trim() == "*" {
            return Self::Any;
        }
        let versions = header
            .split(',')
            .filter_map(|tag| {
                let digits = tag.trim().strip_prefix('"')?.strip_suffix('"')?;
                // Only the canonical form matches: "01" is not the tag "1".
                let canonical = !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && (digits == "0" || !digits.starts_with('0'));
                canonical.then(|| digits.parse().ok()).flatten()
            })
            .collect();
        Self::Versions(versions)
    }

    pub fn matches(&self, version: i64) -> bool {
        match self {
            Self::Any => true,
            Self::Versions(versions) => versions.contains(&version),
        }
    }
}

/// Renders a version as a strong entity tag.
pub fn entity_tag(version: i64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_parses_tag_lists() {
        assert!(IfMatch::parse("*").matches(9));
        assert!(IfMatch::parse("\"3\"").matches(3));
        assert!(IfMatch::parse("\"1\", \"3\"").matches(3));
        assert!(!IfMatch::parse("\"3\"").matches(4));
        assert!(
            !IfMatch::parse("W/\"3\"").matches(3),
            "weak tags never match"
        );
        assert!(
            !IfMatch::parse("3").matches(3),
            "unquoted tags are malformed"
        );
        assert!(
            !IfMatch::parse("\"03\"").matches(3),
            "leading zeros make another tag"
        );
        assert!(
            !IfMatch::parse("\"+3\"").matches(3),
            "a sign makes another tag"
        );
        assert!(!IfMatch::parse("").matches(1));
    }
}
