use super::{FieldError, PostId, Timestamp, UserId};

/// Title length limits, in Unicode scalar values after trimming.
pub const TITLE_MAX_CHARS: usize = 200;
/// Content length limit, in Unicode scalar values.
pub const CONTENT_MAX_CHARS: usize = 10_000;

/// A post title: 1 to 200 characters with no control characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostTitle(String);

impl PostTitle {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let title = raw.trim();
        let chars = title.chars().count();

        if chars == 0 {
            return Err(FieldError::new(
                "title",
                "too_short",
                "title must not be empty",
            ));
        }
        if chars > TITLE_MAX_CHARS {
            return Err(FieldError::new(
                "title",
                "too_long",
                format!("title must have at most {TITLE_MAX_CHARS} characters, got {chars}"),
            ));
        }
        if title.chars().any(char::is_control) {
            return Err(FieldError::new(
                "title",
                "invalid_characters",
                "title must not contain control characters",
            ));
        }
        Ok(Self(title.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Post content: at most 10 000 characters, stored exactly as sent so that
/// leading indentation and trailing newlines survive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostContent(String);

impl PostContent {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let chars = raw.chars().count();
        if chars > CONTENT_MAX_CHARS {
            return Err(FieldError::new(
                "content",
                "too_long",
                format!("content must have at most {CONTENT_MAX_CHARS} characters, got {chars}"),
            ));
        }
        // PostgreSQL text cannot hold NUL, so neither backend stores it.
        if raw.contains('\0') {
            return Err(FieldError::new(
                "content",
                "invalid_characters",
                "content must not contain the NUL character",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The fields a client sets on a post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostFields {
    pub title: PostTitle,
    pub content: PostContent,
}

/// A post to create; the owning user comes from the request path or from the
/// user created alongside it.
pub type NewPost = PostFields;

/// A JSON merge patch of a post: `None` leaves a field unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PostPatch {
    pub title: Option<PostTitle>,
    pub content: Option<PostContent>,
}

/// A stored post that is not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub id: PostId,
    pub user_id: UserId,
    pub title: String,
    pub content: String,
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_limits() {
        assert_eq!(
            PostTitle::parse("  Notes ").map(|t| t.0),
            Ok("Notes".to_owned())
        );
        assert!(PostTitle::parse(&"标".repeat(200)).is_ok());
        assert_eq!(
            PostTitle::parse("   ").map_err(|e| e.code),
            Err("too_short")
        );
        assert_eq!(
            PostTitle::parse(&"标".repeat(201)).map_err(|e| e.code),
            Err("too_long")
        );
    }

    #[test]
    fn content_kept_as_sent() {
        let content = "  indented\n";
        assert_eq!(
            PostContent::parse(content).map(|c| c.0),
            Ok(content.to_owned())
        );
        assert!(PostContent::parse("").is_ok());
        assert!(PostContent::parse(&"é".repeat(10_000)).is_ok());
        assert!(PostContent::parse(&"é".repeat(10_001)).is_err());
    }
}
