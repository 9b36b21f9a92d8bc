//! Domains: the environment a request's runs execute in, a Dockerfile plus a
//! requirements.txt. Named by their content, so every node builds the same
//! image from the same text and never rebuilds an unchanged one. Templates
//! for the usual languages ship here; a Dockerfile is checked before it is
//! accepted.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest Dockerfile or requirements.txt accepted.
pub const MAX_DOMAIN_TEXT: usize = 64 * 1024;

/// An execution environment, as recorded in the grid document and embedded
/// in each request that uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Domain {
    pub name: String,
    pub dockerfile: String,
    #[serde(default)]
    pub requirements: String,
    /// BLAKE3 of the Dockerfile and requirements.txt (hex): the image's tag.
    pub hash: String,
    /// The template it was made from, if any.
    #[serde(default)]
    pub template: Option<String>,
    pub owner: String,
    pub created_ms: u64,
    /// Whether runs may use it: a user's own Dockerfile waits for an
    /// operator's review; templates and operators' domains need none.
    #[serde(default)]
    pub review: Review,
    /// Rooms whose users may use a reviewed domain besides its owner (the
    /// operator chooses them when approving).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

/// Where a domain stands with the grid's operators.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum Review {
    /// Runs may use it.
    #[default]
    Approved,
    /// A user's own Dockerfile: an operator or admin approves or rejects it.
    Requested,
    /// Not to be used, and why.
    Rejected(String),
}

impl Review {
    /// In words, for lists.
    pub fn describe(&self) -> String {
        match self {
            Review::Approved => "approved".into(),
            Review::Requested => "waiting for an operator's approval".into(),
            Review::Rejected(why) => format!("rejected: {why}"),
        }
    }
}

impl Domain {
    /// Whether runs may use it now; the error says why not.
    pub fn usable(&self) -> Result<()> {
        match &self.review {
            Review::Approved => Ok(()),
            Review::Requested => Err(Error::invalid(format!(
                "domain '{}' waits for an operator's approval of its Dockerfile",
                self.name
            ))),
            Review::Rejected(why) => Err(Error::invalid(format!(
                "domain '{}' was rejected by an operator: {why}",
                self.name
            ))),
        }
    }

    /// A domain from its texts, checked.
    pub fn new(
        name: &str,
        dockerfile: &str,
        requirements: &str,
        template: Option<&str>,
        owner: &str,
        created_ms: u64,
    ) -> Result<Domain> {
        check_name(name)?;
        if requirements.len() > MAX_DOMAIN_TEXT {
            return Err(Error::invalid(format!(
                "requirements.txt is {} bytes: at most {MAX_DOMAIN_TEXT}",
                requirements.len()
            )));
        }
        check_dockerfile(dockerfile)?;
        Ok(Domain {
            name: name.to_string(),
            dockerfile: dockerfile.to_string(),
            requirements: requirements.to_string(),
            hash: content_hash(dockerfile, requirements),
            template: template.map(str::to_string),
            owner: owner.to_string(),
            created_ms,
            review: Review::Approved,
            rooms: Vec::new(),
        })
    }

    /// Checks a domain read from a document (a peer may have written it):
    /// what [`Domain::new`] checks, and a hash that is its content's, so an
    /// image tag always names the Dockerfile it was built from.
    pub fn validate(&self) -> Result<()> {
        let again = Domain::new(
            &self.name,
            &self.dockerfile,
            &self.requirements,
            self.template.as_deref(),
            &self.owner,
            self.created_ms,
        )?;
        if again.hash != self.hash {
            return Err(Error::invalid(format!(
                "domain '{}' carries a hash that is not its content's",
                self.name
            )));
        }
        if self.owner.len() > 256 || self.template.as_ref().is_some_and(|t| t.len() > 256) {
            return Err(Error::invalid("the domain's owner or template is too long"));
        }
        Ok(())
    }

    /// The image a node builds for this domain: one tag per content.
    pub fn image_tag(&self) -> String {
        format!(
            "pesc-domain/{}:{}",
            self.name.to_ascii_lowercase(),
            &self.hash[..16.min(self.hash.len())]
        )
    }

    /// The base image (the first stage's `FROM`).
    pub fn base_image(&self) -> Option<String> {
        instructions(&self.dockerfile)
            .ok()?
            .into_iter()
            .find(|i| i.keyword == "FROM")
            .and_then(|i| {
                i.args
                    .split_whitespace()
                    .find(|w| !w.starts_with("--"))
                    .map(str::to_string)
            })
    }
}

fn content_hash(dockerfile: &str, requirements: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"pesc domain v1\0");
    h.update(&(dockerfile.len() as u64).to_le_bytes());
    h.update(dockerfile.as_bytes());
    h.update(requirements.as_bytes());
    h.finalize().to_hex().to_string()
}

/// Domain names: letters, digits, `.`, `_`, `-`; 1 to 64 characters, not
/// starting with a dot or dash (they become part of an image name).
pub fn check_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 {
        return Err(Error::invalid(format!(
            "domain name '{name}': 1 to 64 characters"
        )));
    }
    if !name.chars().all(ok_char) || name.starts_with(['.', '-']) {
        return Err(Error::invalid(format!(
            "domain name '{name}': use letters, digits, '.', '_' and '-' (not first)"
        )));
    }
    Ok(())
}

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Line where it starts (1-based).
    pub line: usize,
    /// Upper case.
    pub keyword: String,
    pub args: String,
}

const KNOWN: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
    "MAINTAINER",
];

/// Splits a Dockerfile into instructions (comments and blank lines dropped,
/// `\` continuations joined).
pub fn instructions(text: &str) -> Result<Vec<Instruction>> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || (trimmed.is_empty() && cur.is_none()) {
            continue;
        }
        let (body, more) = match line.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (line, false),
        };
        match &mut cur {
            Some((_, acc)) => {
                acc.push(' ');
                acc.push_str(body.trim());
            }
            None => cur = Some((i + 1, body.trim().to_string())),
        }
        if !more && let Some((n, acc)) = cur.take() {
            out.push(split_instruction(n, &acc)?);
        }
    }
    if let Some((n, acc)) = cur {
        out.push(split_instruction(n, &acc)?);
    }
    Ok(out)
}

fn split_instruction(line: usize, text: &str) -> Result<Instruction> {
    let (kw, args) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let keyword = kw.to_ascii_uppercase();
    if !KNOWN.contains(&keyword.as_str()) {
        return Err(Error::invalid(format!(
            "Dockerfile line {line}: unknown instruction '{kw}'"
        )));
    }
    let args = args.trim().to_string();
    if args.is_empty() {
        return Err(Error::invalid(format!(
            "Dockerfile line {line}: {keyword} needs arguments"
        )));
    }
    Ok(Instruction {
        line,
        keyword,
        args,
    })
}

/// What the build context holds besides the Dockerfile: the only file a
/// `COPY`/`ADD` may name.
pub const CONTEXT_FILE: &str = "requirements.txt";

/// Checks a Dockerfile before it is accepted: it parses, names a base image
/// first, and asks for nothing the build cannot give (files other than
/// requirements.txt from the context, paths out of it).
pub fn check_dockerfile(text: &str) -> Result<()> {
    if text.len() > MAX_DOMAIN_TEXT {
        return Err(Error::invalid(format!(
            "the Dockerfile is {} bytes: at most {MAX_DOMAIN_TEXT}",
            text.len()
        )));
    }
    let all = instructions(text)?;
    let Some(first_from) = all.iter().position(|i| i.keyword == "FROM") else {
        return Err(Error::invalid(
            "the Dockerfile has no FROM: start it with the base image, e.g. FROM python:3.12-slim",
        ));
    };
    if let Some(i) = all[..first_from].iter().find(|i| i.keyword != "ARG") {
        return Err(Error::invalid(format!(
            "Dockerfile line {}: {} before FROM (only ARG may come first)",
            i.line, i.keyword
        )));
    }
    for i in &all {
        match i.keyword.as_str() {
            "FROM" => {
                let image = i.args.split_whitespace().find(|w| !w.starts_with("--"));
                if image.is_none() {
                    return Err(Error::invalid(format!(
                        "Dockerfile line {}: FROM needs an image",
                        i.line
                    )));
                }
            }
            "COPY" | "ADD" => check_copy(i)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_copy(i: &Instruction) -> Result<()> {
    let words: Vec<String> = if i.args.starts_with('[') {
        serde_json::from_str::<Vec<String>>(&i.args).map_err(|_| {
            Error::invalid(format!(
                "Dockerfile line {}: {} has a broken JSON list",
                i.line, i.keyword
            ))
        })?
    } else {
        i.args.split_whitespace().map(str::to_string).collect()
    };
    if words.iter().any(|w| w.starts_with("--from")) {
        // From another stage or image: not the context.
        return Ok(());
    }
    let paths: Vec<&String> = words.iter().filter(|w| !w.starts_with("--")).collect();
    if paths.len() < 2 {
        return Err(Error::invalid(format!(
            "Dockerfile line {}: {} needs a source and a destination",
            i.line, i.keyword
        )));
    }
    for src in &paths[..paths.len() - 1] {
        let s = src.trim_start_matches("./");
        if s.contains("://") {
            return Err(Error::invalid(format!(
                "Dockerfile line {}: {} of a URL ({src}): fetch it in a RUN step instead",
                i.line, i.keyword
            )));
        }
        if s != CONTEXT_FILE {
            return Err(Error::invalid(format!(
                "Dockerfile line {}: {} {src}: the build has only {CONTEXT_FILE} besides the Dockerfile (your program's files reach the run in /app)",
                i.line, i.keyword
            )));
        }
    }
    Ok(())
}

/// How a template installs extra packages listed in requirements.txt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packages {
    /// `pip install -r` (Python packages).
    Pip,
    /// `install.packages` (CRAN packages).
    Cran,
    /// `apt-get install` (Debian packages).
    Apt,
    /// No package manager: extra packages are refused.
    None,
}

/// A domain template that ships in the binary.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub name: &'static str,
    pub description: &'static str,
    /// Key a node's config may map to another base image (`[docker.template_bases]`).
    pub family: &'static str,
    /// Base image used unless the node's config maps `family` elsewhere.
    pub base: &'static str,
    /// Packages every domain of this template gets.
    pub packages: &'static [&'static str],
    pub installs: Packages,
}

pub const TEMPLATES: &[Template] = &[
    Template {
        name: "SimplePython",
        description: "Python 3 with no extra packages",
        family: "python",
        base: "python:3.12-slim",
        packages: &[],
        installs: Packages::Pip,
    },
    Template {
        name: "PythonScientific",
        description: "Python 3 with numpy, pandas and scikit-learn",
        family: "python",
        base: "python:3.12-slim",
        packages: &["numpy", "pandas", "scikit-learn"],
        installs: Packages::Pip,
    },
    Template {
        name: "R",
        description: "R (Rscript)",
        family: "r",
        base: "r-base:4.4.1",
        packages: &[],
        installs: Packages::Cran,
    },
    Template {
        name: "Java",
        description: "Java 17 (java -jar)",
        family: "java",
        base: "eclipse-temurin:17-jdk",
        packages: &[],
        installs: Packages::None,
    },
    Template {
        name: "C",
        description: "C and C++ (gcc, g++, make)",
        family: "gcc",
        base: "gcc:13",
        packages: &[],
        installs: Packages::Apt,
    },
    Template {
        name: "PyTorch",
        description: "PyTorch with CUDA",
        family: "pytorch",
        base: "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime",
        packages: &[],
        installs: Packages::Pip,
    },
    Template {
        name: "TensorFlow",
        description: "TensorFlow",
        family: "tensorflow",
        base: "tensorflow/tensorflow:2.17.0",
        packages: &[],
        installs: Packages::Pip,
    },
];

/// The template called `name` (case does not matter).
pub fn template(name: &str) -> Result<&'static Template> {
    TEMPLATES
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            let names: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
            Error::invalid(format!(
                "no template '{name}': use one of {}",
                names.join(", ")
            ))
        })
}

impl Template {
    /// The Dockerfile and requirements.txt of a domain made from this
    /// template with `extra` packages, on `base` (the template's own base
    /// unless the node maps its family elsewhere).
    pub fn render(&self, base: &str, extra: &[String]) -> Result<(String, String)> {
        for p in extra {
            let ok = !p.is_empty()
                && p.len() <= 200
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-+=<>!~,[]:@/".contains(c));
            if !ok {
                return Err(Error::invalid(format!(
                    "package '{p}': a name with an optional version (e.g. numpy==2.1.0)"
                )));
            }
        }
        if self.installs == Packages::None && !extra.is_empty() {
            return Err(Error::invalid(format!(
                "template {} installs no packages: bundle them with your program, or write a Dockerfile",
                self.name
            )));
        }
        let mut req: Vec<String> = self.packages.iter().map(|s| s.to_string()).collect();
        req.extend(extra.iter().cloned());
        let requirements = if req.is_empty() {
            String::new()
        } else {
            req.join("\n") + "\n"
        };
        let install = match self.installs {
            Packages::Pip => {
                "RUN if [ -s /tmp/requirements.txt ]; then \\\n    pip install --no-cache-dir --break-system-packages -r /tmp/requirements.txt; fi\n"
            }
            Packages::Cran => {
                "RUN if [ -s /tmp/requirements.txt ]; then \\\n    Rscript -e 'install.packages(readLines(\"/tmp/requirements.txt\"), repos=\"https://cloud.r-project.org\")'; fi\n"
            }
            Packages::Apt => {
                "RUN if [ -s /tmp/requirements.txt ]; then \\\n    apt-get update && xargs apt-get install -y --no-install-recommends < /tmp/requirements.txt \\\n    && rm -rf /var/lib/apt/lists/*; fi\n"
            }
            Packages::None => "",
        };
        let dockerfile = format!(
            "# PESC domain template {} ({})\nFROM {base}\nCOPY {CONTEXT_FILE} /tmp/requirements.txt\n{install}WORKDIR /app\n",
            self.name, self.description
        );
        check_dockerfile(&dockerfile)?;
        Ok((dockerfile, requirements))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_dockerfiles_pass() {
        check_dockerfile("FROM python:3.12-slim\nRUN pip install numpy\n").unwrap();
        check_dockerfile(
            "# syntax=docker/dockerfile:1\nARG V=3.12\nFROM python:${V}-slim AS base\n\
             COPY requirements.txt /tmp/\nRUN apt-get update && \\\n    apt-get install -y gcc\n\
             FROM base\nCOPY --from=base /usr /usr\nENV A=1\nWORKDIR /app\n",
        )
        .unwrap();
        check_dockerfile("from debian\nrun true\ncopy [\"requirements.txt\", \"/r\"]\n").unwrap();
    }

    #[test]
    fn broken_dockerfiles_say_what_is_wrong() {
        let err = |t: &str| check_dockerfile(t).unwrap_err().to_string();
        assert!(err("").contains("no FROM"));
        assert!(err("RUN true\n").contains("no FROM"));
        assert!(err("RUN true\nFROM x\n").contains("line 1: RUN before FROM"));
        assert!(err("FROM x\nRUNN true\n").contains("line 2: unknown instruction 'RUNN'"));
        assert!(err("FROM\n").contains("FROM needs arguments"));
        assert!(err("FROM --platform=linux/amd64\n").contains("FROM needs an image"));
        assert!(err("FROM x\nCOPY . /app\n").contains("only requirements.txt"));
        assert!(err("FROM x\nCOPY ../secret /s\n").contains("only requirements.txt"));
        assert!(err("FROM x\nADD https://example.org/f /f\n").contains("URL"));
        assert!(err("FROM x\nCOPY requirements.txt\n").contains("source and a destination"));
        assert!(err("FROM x\nCOPY [\"a\"\n").contains("broken JSON"));
        assert!(err(&format!("FROM x\nRUN {}\n", "a".repeat(MAX_DOMAIN_TEXT))).contains("at most"));
    }

    #[test]
    fn domains_are_named_by_content() {
        let a = Domain::new("sci", "FROM x\n", "numpy\n", None, "ana", 1).unwrap();
        let b = Domain::new("sci", "FROM x\n", "numpy\n", None, "bia", 2).unwrap();
        let c = Domain::new("sci", "FROM x\n", "pandas\n", None, "ana", 1).unwrap();
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
        assert_eq!(a.image_tag(), format!("pesc-domain/sci:{}", &a.hash[..16]));
        assert_eq!(a.base_image().as_deref(), Some("x"));
        assert!(Domain::new("../x", "FROM x\n", "", None, "a", 1).is_err());
        assert!(Domain::new("", "FROM x\n", "", None, "a", 1).is_err());
        assert!(Domain::new("-x", "FROM x\n", "", None, "a", 1).is_err());
    }

    #[test]
    fn templates_render_valid_dockerfiles_with_their_packages() {
        for t in TEMPLATES {
            let (d, _) = t.render(t.base, &[]).unwrap();
            check_dockerfile(&d).unwrap();
            assert!(d.contains(&format!("FROM {}\n", t.base)), "{d}");
        }
        let sci = template("pythonscientific").unwrap();
        let (d, r) = sci
            .render("pesc-offline/python:bookworm", &["scipy==1.14.0".into()])
            .unwrap();
        assert!(d.contains("FROM pesc-offline/python:bookworm\n"));
        assert_eq!(r, "numpy\npandas\nscikit-learn\nscipy==1.14.0\n");
        assert!(sci.render("x", &["rm -rf /".into()]).is_err());
        assert!(
            template("Java")
                .unwrap()
                .render("x", &["junit".into()])
                .is_err()
        );
        assert!(
            template("Fortran")
                .unwrap_err()
                .to_string()
                .contains("SimplePython")
        );
    }
}
