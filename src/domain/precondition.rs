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
        Self::parse_tags(header, false)
    }

    /// Parses an `If-None-Match` list, where a weak tag `W/"7"` also names
    /// version 7, because RFC 9110 compares its tags weakly.
    pub fn parse_weak(header: &str) -> Self {
        Self::parse_tags(header, true)
    }

    fn parse_tags(header: &str, weak: bool) -> Self {
        if header.trim() == "*" {
            return Self::Any;
        }
        let versions = header
            .split(',')
            .filter_map(|tag| {
                let tag = tag.trim();
                let tag = if weak {
                    tag.strip_prefix("W/").unwrap_or(tag)
                } else {
                    tag
                };
                let digits = tag.strip_prefix('"')?.strip_suffix('"')?;
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

/// The preconditions of a write on the resource's current version, from
/// its `If-Match` and `If-None-Match` headers. The write goes ahead only
/// when `if_match` matches the version and `if_none_match` does not, as
/// RFC 9110 evaluates them. An absent header always passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precondition {
    pub if_match: Option<IfMatch>,
    /// The versions `If-None-Match` lists, or `IfMatch::Any` for `*`, which
    /// fails on any resource that exists.
    pub if_none_match: Option<IfMatch>,
}

impl Precondition {
    pub fn allows(&self, version: i64) -> bool {
        let matched = self
            .if_match
            .as_ref()
            .is_none_or(|if_match| if_match.matches(version));
        let excluded = self
            .if_none_match
            .as_ref()
            .is_some_and(|if_none_match| if_none_match.matches(version));
        matched && !excluded
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
    fn precondition_combines_both_headers() {
        let none = Precondition::default();
        assert!(none.allows(4), "no header always passes");
        let if_none_match = |header| Precondition {
            if_match: None,
            if_none_match: Some(IfMatch::parse_weak(header)),
        };
        assert!(!if_none_match("*").allows(4), "* fails on any version");
        assert!(!if_none_match("W/\"4\"").allows(4), "weak tags count");
        assert!(!if_none_match("\"3\", \"4\"").allows(4));
        assert!(if_none_match("\"3\"").allows(4));
        let both = Precondition {
            if_match: Some(IfMatch::parse("\"4\"")),
            if_none_match: Some(IfMatch::parse_weak("\"4\"")),
        };
        assert!(
            !both.allows(4),
            "If-None-Match fails even when If-Match passes"
        );
    }

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
