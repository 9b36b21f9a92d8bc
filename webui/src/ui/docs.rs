//! The guides in `docs/`, built into the binary and served as pages, and
//! the API reference drawn from the OpenAPI document.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::{Flash, Page, error_page, layout, trusted};

/// (slug, title, Markdown).
const PAGES: &[(&str, &str, &str)] = &[
    (
        "user-guide",
        "User guide",
        include_str!("../../../docs/user-guide.md"),
    ),
    (
        "operator-guide",
        "Operator guide",
        include_str!("../../../docs/operator-guide.md"),
    ),
    (
        "admin-guide",
        "Admin guide",
        include_str!("../../../docs/admin-guide.md"),
    ),
    (
        "how-tos",
        "How-tos",
        include_str!("../../../docs/how-tos.md"),
    ),
    (
        "header-snippets",
        "Reading the header (snippets)",
        include_str!("../../../docs/header-snippets.md"),
    ),
    (
        "security",
        "Security",
        include_str!("../../../docs/security.md"),
    ),
    ("api", "API guide", include_str!("../../../docs/api.md")),
    (
        "architecture",
        "Architecture",
        include_str!("../../../docs/architecture.md"),
    ),
    (
        "performance",
        "Performance",
        include_str!("../../../docs/performance.md"),
    ),
];

pub(crate) async fn index(p: Page, flash: Query<Flash>) -> Response {
    let body = html! {
        ul.docs {
            @for (slug, title, _) in PAGES { li { a href={ "/docs/" (slug) } { (title) } } }
            li { a href="/docs/api" { "API reference" } " (from " a href="/api/v1/openapi.json" { "the OpenAPI document" } ")" }
        }
    };
    layout(&p, "Documentation", &flash, body).into_response()
}

/// Markdown to HTML; links between guides (`user-guide.md`) become pages.
/// Raw HTML in the Markdown is shown as text.
fn render(md: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, Tag};
    let parser = Parser::new_ext(md, Options::ENABLE_TABLES).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => {
            let dest = match dest_url.strip_suffix(".md") {
                Some(slug) if !slug.contains(['/', ':']) => format!("/docs/{slug}").into(),
                _ => dest_url,
            };
            Event::Start(Tag::Link {
                link_type,
                dest_url: dest,
                title,
                id,
            })
        }
        other => other,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, parser);
    out
}

pub(crate) async fn page(p: Page, Path(slug): Path<String>, flash: Query<Flash>) -> Response {
    let slug = slug.trim_end_matches(".md");
    let Some((_, title, md)) = PAGES.iter().find(|(s, _, _)| *s == slug) else {
        return error_page(StatusCode::NOT_FOUND, &format!("No guide named '{slug}'."));
    };
    layout(
        &p,
        title,
        &flash,
        html! { article.doc { (trusted(render(md))) } },
    )
    .into_response()
}

/// Every path of `/api/v1` with its methods, summary and answers.
pub(crate) async fn api_reference(p: Page, flash: Query<Flash>) -> Response {
    let doc: serde_json::Value =
        serde_json::from_str(&crate::openapi::document()).unwrap_or_default();
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    let body = html! {
        p { "Every call needs a session (log in) or " code { "Authorization: Bearer TOKEN" } ", except "
            code { "POST /api/v1/login" } " and the " a href="/api/v1/openapi.json" { "OpenAPI document" } " itself. Errors are JSON: "
            code { "{\"error\": \"what to fix\"}" } "." }
        table.api {
            thead { tr { th { "Method" } th { "Path" } th { "What" } th { "Answers" } } }
            tbody {
                @for (path, ops) in &paths {
                    @for (method, op) in ops.as_object().into_iter().flatten() {
                        tr {
                            td { code { (method.to_uppercase()) } }
                            td { code { (path) } }
                            td { (op["summary"].as_str().or(op["description"].as_str()).unwrap_or("")) }
                            td { @for (code, r) in op["responses"].as_object().into_iter().flatten() {
                                div { code { (code) } " " (r["description"].as_str().unwrap_or("")) } } }
                        }
                    }
                }
            }
        }
    };
    layout(&p, "API reference", &flash, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guides_link_to_each_other_and_raw_html_is_text() {
        let h = render("see [the header](header-snippets.md) and <script>x</script>");
        assert!(h.contains("href=\"/docs/header-snippets\""), "{h}");
        assert!(h.contains("&lt;script&gt;"), "{h}");
        assert!(!h.contains("<script>"));
    }

    #[test]
    fn every_guide_renders() {
        for (slug, _, md) in PAGES {
            assert!(render(md).contains("<h1>"), "{slug} has no title");
        }
    }
}
