//! Parquet rows <-> records, through polars.
//!
//! Columns (see `SCHEMA.md`): a dialog or a prompt is either a `string` column (one user turn) or a
//! `list<struct{role: string, content: string}>` column; text fields are `string`, flags `bool`,
//! every optional field nullable. Writers always write dialogs as lists (the canonical form).
//!
//! Reading turns a slice of a row group into one JSON object per row, so that Parquet and JSONL
//! rows go through the same parser and checks, and a bad Parquet row is reported (and kept in the
//! rejects file) exactly like a bad JSONL line.
use llama_text::chat::{Message, Role};
use polars::chunked_array::builder::get_list_builder;
use polars::prelude::*;
use serde_json::{Map, Number, Value};

use crate::records::{PreferenceRecord, PromptRecord, SftRecord};

/// A column as one JSON value per row (null stays null). Fails on a type no record field can
/// hold (dates, binary, ...), naming the type.
pub fn column_to_json(s: &Series) -> PolarsResult<Vec<Value>> {
    let null_or = |v: Option<Value>| v.unwrap_or(Value::Null);
    Ok(match s.dtype() {
        DataType::String => s.str()?.iter().map(|v| null_or(v.map(|t| Value::String(t.into())))).collect(),
        DataType::Boolean => s.bool()?.iter().map(|v| null_or(v.map(Value::Bool))).collect(),
        DataType::Null => vec![Value::Null; s.len()],
        DataType::List(_) => s
            .list()?
            .series_iter()
            .map(|v| v.map_or(Ok(Value::Null), |inner| column_to_json(&inner).map(Value::Array)))
            .collect::<PolarsResult<_>>()?,
        DataType::Struct(_) => struct_to_json(s)?,
        DataType::Categorical(..) | DataType::Enum(..) => column_to_json(&s.cast(&DataType::String)?)?,
        d if d.is_integer() => s.cast(&DataType::Int64)?.i64()?.iter().map(|v| null_or(v.map(Value::from))).collect(),
        d if d.is_float() => {
            s.cast(&DataType::Float64)?.f64()?.iter().map(|v| null_or(v.and_then(Number::from_f64).map(Value::Number))).collect()
        }
        d => polars_bail!(ComputeError: "unsupported type {d}: expected string, bool or list<struct{{role, content}}>"),
    })
}

fn struct_to_json(s: &Series) -> PolarsResult<Vec<Value>> {
    let fields = s.struct_()?.fields_as_series();
    let columns = fields.iter().map(column_to_json).collect::<PolarsResult<Vec<_>>>()?;
    let nulls = s.is_null();
    Ok((0..s.len())
        .map(|i| {
            if nulls.get(i).unwrap_or(false) {
                return Value::Null;
            }
            let obj: Map<String, Value> = fields.iter().zip(&columns).map(|(f, c)| (f.name().to_string(), c[i].clone())).collect();
            Value::Object(obj)
        })
        .collect())
}

/// One JSON object per row of `df` (all its columns).
pub fn frame_to_rows(df: &DataFrame) -> PolarsResult<Vec<Value>> {
    let mut columns = Vec::with_capacity(df.width());
    for c in df.columns() {
        let values = column_to_json(c.as_materialized_series()).map_err(|e| polars_err!(ComputeError: "column `{}`: {e}", c.name()))?;
        columns.push((c.name().to_string(), values.into_iter()));
    }
    Ok((0..df.height())
        .map(|_| {
            let obj: Map<String, Value> = columns.iter_mut().map(|(name, it)| (name.clone(), it.next().unwrap_or(Value::Null))).collect();
            Value::Object(obj)
        })
        .collect())
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// Dialogs as a `list<struct{role, content}>` column: the messages of all rows in one flat struct
/// column, cut into lists (one copy of the text, no per-row frames).
pub fn dialog_column<'a>(name: &str, dialogs: impl Iterator<Item = &'a [Message]>) -> PolarsResult<Column> {
    let (mut roles, mut contents, mut lens) = (Vec::new(), Vec::new(), Vec::new());
    for d in dialogs {
        lens.push(d.len());
        roles.extend(d.iter().map(|m| role_name(m.role)));
        contents.extend(d.iter().map(|m| m.content.as_str()));
    }
    let fields = [Series::new("role".into(), roles), Series::new("content".into(), contents)];
    let flat = StructChunked::from_series("item".into(), fields[0].len(), fields.iter())?.into_series();
    let mut builder = get_list_builder(flat.dtype(), flat.len(), lens.len(), name.into());
    let mut offset = 0;
    for n in lens {
        builder.append_series(&flat.slice(offset as i64, n))?;
        offset += n;
    }
    Ok(builder.finish().into_series().into_column())
}

fn strings<'a>(name: &str, v: impl Iterator<Item = &'a str>) -> Column {
    Column::new(name.into(), v.collect::<Vec<_>>())
}

fn opt_strings<'a>(name: &str, v: impl Iterator<Item = Option<&'a str>>) -> Column {
    Column::new(name.into(), v.collect::<Vec<_>>())
}

fn opt_bools(name: &str, v: impl Iterator<Item = Option<bool>>) -> Column {
    Column::new(name.into(), v.collect::<Vec<_>>())
}

pub fn sft_frame(rows: &[SftRecord]) -> PolarsResult<DataFrame> {
    DataFrame::new(rows.len(), vec![dialog_column("messages", rows.iter().map(|r| &r.messages[..]))?])
}

pub fn preference_frame(rows: &[PreferenceRecord]) -> PolarsResult<DataFrame> {
    let columns = vec![
        dialog_column("prompt", rows.iter().map(|r| &r.prompt[..]))?,
        strings("chosen", rows.iter().map(|r| r.chosen.as_str())),
        strings("rejected", rows.iter().map(|r| r.rejected.as_str())),
        opt_strings("rating", rows.iter().map(|r| r.rating.map(|x| x.as_str()))),
        opt_strings("kind", rows.iter().map(|r| r.kind.map(|x| x.as_str()))),
        opt_bools("chosen_safe", rows.iter().map(|r| r.chosen_safe)),
        opt_bools("rejected_safe", rows.iter().map(|r| r.rejected_safe)),
        opt_strings("source", rows.iter().map(|r| r.source.as_deref())),
    ];
    DataFrame::new(rows.len(), columns)
}

pub fn prompt_frame(rows: &[PromptRecord]) -> PolarsResult<DataFrame> {
    let columns =
        vec![dialog_column("prompt", rows.iter().map(|r| &r.prompt[..]))?, opt_bools("is_safety", rows.iter().map(|r| Some(r.is_safety)))];
    DataFrame::new(rows.len(), columns)
}
