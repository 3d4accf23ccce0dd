//! `${stage}` and `${stage.dir}` in a stage's strings: the output of an earlier stage (its model
//! folder, data folder or file) and that stage's folder. Nothing else is a reference, and an
//! unknown attribute is an error, not a silent `${stage}`.
use std::collections::BTreeSet;
use std::ops::Range;
use std::path::PathBuf;

/// What of a stage a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    /// `${stage}`: its output.
    Output,
    /// `${stage.dir}`: its folder.
    Dir,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub stage: String,
    pub attr: Attr,
}

/// Every `${...}` of `s` with its byte range, in order; an error names the string and what is
/// wrong (unclosed `${`, empty name, unknown attribute).
pub fn references(s: &str) -> Result<Vec<(Range<usize>, Reference)>, String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = s[from..].find("${").map(|i| from + i) {
        let end = s[start..].find('}').map(|e| start + e).ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
        let key = &s[start + 2..end];
        let (stage, attr) = match key.split_once('.') {
            None => (key, Attr::Output),
            Some((stage, "dir")) => (stage, Attr::Dir),
            Some((_, other)) => {
                return Err(format!(
                    "{:?} in {s:?}: unknown attribute {other:?} (`${{stage}}` is a stage's output, `${{stage.dir}}` its folder)",
                    &s[start..=end]
                ))
            }
        };
        if stage.is_empty() {
            return Err(format!("{:?} in {s:?}: no stage named", &s[start..=end]));
        }
        out.push((start..end + 1, Reference { stage: stage.to_string(), attr }));
        from = end + 1;
    }
    Ok(out)
}

/// Every reference in the strings of `v` (tables and arrays walked), in order.
pub fn all_references(v: &toml::Value) -> Result<Vec<Reference>, String> {
    let mut out = Vec::new();
    walk(v, &mut |s| {
        out.extend(references(s)?.into_iter().map(|(_, r)| r));
        Ok(())
    })?;
    Ok(out)
}

fn walk(v: &toml::Value, f: &mut dyn FnMut(&str) -> Result<(), String>) -> Result<(), String> {
    match v {
        toml::Value::String(s) => f(s),
        toml::Value::Array(a) => a.iter().try_for_each(|x| walk(x, f)),
        toml::Value::Table(t) => t.values().try_for_each(|x| walk(x, f)),
        _ => Ok(()),
    }
}

/// Replaces every reference in the strings of `v` by `path_of` it; returns the stages named.
pub fn substitute(v: &mut toml::Value, path_of: &dyn Fn(&Reference) -> PathBuf) -> Result<BTreeSet<String>, String> {
    let mut used = BTreeSet::new();
    substitute_into(v, path_of, &mut used)?;
    Ok(used)
}

fn substitute_into(v: &mut toml::Value, path_of: &dyn Fn(&Reference) -> PathBuf, used: &mut BTreeSet<String>) -> Result<(), String> {
    match v {
        toml::Value::String(s) => {
            // Right to left, so the ranges of the earlier references stay valid.
            for (range, r) in references(s)?.into_iter().rev() {
                s.replace_range(range, &path_of(&r).display().to_string());
                used.insert(r.stage);
            }
            Ok(())
        }
        toml::Value::Array(a) => a.iter_mut().try_for_each(|x| substitute_into(x, path_of, used)),
        toml::Value::Table(t) => t.iter_mut().try_for_each(|(_, x)| substitute_into(x, path_of, used)),
        _ => Ok(()),
    }
}

/// `s` with its references replaced.
pub fn substitute_str(s: &str, path_of: &dyn Fn(&Reference) -> PathBuf) -> Result<PathBuf, String> {
    let mut v = toml::Value::String(s.to_string());
    substitute(&mut v, path_of)?;
    Ok(PathBuf::from(v.as_str().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(stage: &str, attr: Attr) -> Reference {
        Reference { stage: stage.into(), attr }
    }

    #[test]
    fn finds_output_and_dir_references() {
        let got = references("${data}/x and ${rs.dir}/iter1").unwrap();
        assert_eq!(got, vec![(0..7, r("data", Attr::Output)), (14..23, r("rs", Attr::Dir))]);
        assert!(references("no references, $HOME {x}").unwrap().is_empty());
    }

    #[test]
    fn unknown_attribute_unclosed_and_empty_are_errors() {
        let e = references("${sft.anything}/x").unwrap_err();
        assert!(e.contains("${sft.anything}") && e.contains("anything"), "{e}");
        assert!(references("${sft/x").unwrap_err().contains("unclosed"));
        assert!(references("${}/x").is_err());
    }

    #[test]
    fn substitutes_in_nested_values() {
        let mut v: toml::Value = toml::Value::Table("a = [\"${d}/f\", \"${d.dir}\"]\n[t]\nb = \"${e}${d}\"\n".parse().unwrap());
        let used =
            substitute(&mut v, &|r| PathBuf::from(format!("{}-{}", r.stage, if r.attr == Attr::Dir { "dir" } else { "out" }))).unwrap();
        assert_eq!(v["a"][0].as_str(), Some("d-out/f"));
        assert_eq!(v["a"][1].as_str(), Some("d-dir"));
        assert_eq!(v["t"]["b"].as_str(), Some("e-outd-out"));
        assert_eq!(used.into_iter().collect::<Vec<_>>(), ["d", "e"]);
    }
}
