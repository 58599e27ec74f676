//! Reading the Alibaba GPU-sharing trace format (and any file of the same shape): a node list
//! (`sn, cpu_milli, memory_mib, gpu, model`) and a task list (`name, cpu_milli, memory_mib,
//! num_gpu, gpu_milli` required; `gpu_spec`, `creation_time`, `deletion_time` used when present).

use gpucloud_sched::share::{Ask, Gpu, MILLI, ModelSet, Node};
use std::collections::HashMap;
use std::path::Path;

/// GPU model names, interned to the small ids the placer uses.
#[derive(Debug, Default, Clone)]
pub struct Models {
    names: Vec<String>,
}

impl Models {
    pub fn id(&mut self, name: &str) -> u16 {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return i as u16;
        }
        self.names.push(name.to_string());
        (self.names.len() - 1) as u16
    }

    pub fn name(&self, id: u16) -> &str {
        &self.names[id as usize]
    }

    /// Every name, by id.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Model sets are 64-bit masks: more distinct names would alias.
    fn check(&self, file: &str) -> Result<(), String> {
        if self.names.len() > 64 {
            return Err(format!("{file}: more than 64 distinct GPU model names (nodes and gpu_spec together)"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct NodeRow {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u32,
    pub model: u16,
}

impl NodeRow {
    pub fn node(&self) -> Node {
        Node::new(self.model, self.cpu_milli, self.memory_mib, (0..self.gpus).map(|_| Gpu::idle()).collect())
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub ask: Ask,
    /// `gpu_spec` as written (empty: any model).
    pub spec: String,
    pub creation: Option<i64>,
    pub deletion: Option<i64>,
    /// The `qos` column, if any: the replay bills per class.
    pub class: String,
}

#[derive(Debug, Clone)]
pub struct Trace {
    pub name: String,
    pub tasks: Vec<Task>,
}

struct Table {
    file: String,
    columns: HashMap<String, usize>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    fn read(path: &Path) -> Result<Table, String> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().ok_or_else(|| format!("{file}: empty file, expected a CSV header"))?;
        let columns = split(header).into_iter().enumerate().map(|(i, c)| (c, i)).collect();
        let rows = lines.map(|(i, l)| (i + 1, split(l))).collect();
        Ok(Table { file, columns, rows })
    }

    fn require(&self, names: &[&str]) -> Result<(), String> {
        let missing: Vec<&str> = names.iter().copied().filter(|n| !self.columns.contains_key(*n)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: missing column(s) {} in the header", self.file, missing.join(", ")))
        }
    }

    fn text<'r>(&self, row: &'r [String], col: &str) -> &'r str {
        self.columns.get(col).and_then(|&i| row.get(i)).map(String::as_str).unwrap_or("")
    }

    fn int(&self, line: usize, row: &[String], col: &str) -> Result<Option<i64>, String> {
        let v = self.text(row, col);
        if v.is_empty() {
            return Ok(None);
        }
        // Some exports write integral values as floats ("1000.0").
        let parsed = v.parse::<i64>().ok().or_else(|| {
            v.parse::<f64>().ok().filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64)
        });
        parsed.map(Some).ok_or_else(|| format!("{}:{line}: column {col}: '{v}' is not an integer", self.file))
    }

    fn count(&self, line: usize, row: &[String], col: &str) -> Result<u64, String> {
        match self.int(line, row, col)? {
            Some(v) if v >= 0 => Ok(v as u64),
            Some(v) => Err(format!("{}:{line}: column {col}: {v} is negative", self.file)),
            None => Err(format!("{}:{line}: column {col} is empty", self.file)),
        }
    }
}

fn split(line: &str) -> Vec<String> {
    line.split(',').map(|f| f.trim().trim_matches('"').to_string()).collect()
}

pub fn read_nodes(path: &Path, models: &mut Models) -> Result<Vec<NodeRow>, String> {
    let t = Table::read(path)?;
    t.require(&["sn", "cpu_milli", "memory_mib", "gpu", "model"])?;
    let mut out = Vec::new();
    for (line, row) in &t.rows {
        let gpus = t.count(*line, row, "gpu")?;
        if gpus == 0 {
            // CPU-only nodes are not part of the simulated GPU cluster.
            continue;
        }
        if gpus > 64 {
            return Err(format!("{}:{line}: column gpu: {gpus} GPUs on one node (at most 64)", t.file));
        }
        let model = t.text(row, "model");
        if model.is_empty() {
            return Err(format!("{}:{line}: a node with {gpus} GPUs has no model", t.file));
        }
        out.push(NodeRow {
            name: t.text(row, "sn").to_string(),
            cpu_milli: t.count(*line, row, "cpu_milli")?,
            memory_mib: t.count(*line, row, "memory_mib")?,
            gpus: gpus as u32,
            model: models.id(model),
        });
    }
    if out.is_empty() {
        return Err(format!("{}: no node with a GPU", t.file));
    }
    models.check(&t.file)?;
    Ok(out)
}

pub fn read_trace(path: &Path, models: &mut Models) -> Result<Trace, String> {
    let t = Table::read(path)?;
    t.require(&["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"])?;
    let mut tasks = Vec::with_capacity(t.rows.len());
    for (line, row) in &t.rows {
        let num_gpu = t.count(*line, row, "num_gpu")?;
        let gpu_milli = t.count(*line, row, "gpu_milli")?;
        if num_gpu > 64 {
            return Err(format!("{}:{line}: column num_gpu: {num_gpu} (at most 64)", t.file));
        }
        if num_gpu > 0 && !(1..=MILLI as u64).contains(&gpu_milli) {
            return Err(format!("{}:{line}: column gpu_milli: {gpu_milli} (1..=1000 for a GPU task)", t.file));
        }
        if num_gpu > 1 && gpu_milli != MILLI as u64 {
            return Err(format!(
                "{}:{line}: a task on {num_gpu} GPUs must take them whole (gpu_milli {gpu_milli})",
                t.file
            ));
        }
        let spec = t.text(row, "gpu_spec").to_string();
        let mut set = ModelSet::ANY;
        for name in spec.split('|').map(str::trim).filter(|s| !s.is_empty()) {
            set = set.with(models.id(name));
        }
        let ask = Ask {
            cpu_milli: t.count(*line, row, "cpu_milli")?,
            mem_mib: t.count(*line, row, "memory_mib")?,
            num_gpu: num_gpu as u32,
            gpu_milli: if num_gpu == 0 { 0 } else { gpu_milli as u32 },
            gpu_mem_mib: 0,
            models: set,
            mig: false,
            tenant: 0,
        };
        tasks.push(Task {
            name: t.text(row, "name").to_string(),
            ask,
            spec,
            creation: t.int(*line, row, "creation_time")?,
            deletion: t.int(*line, row, "deletion_time")?,
            class: t.text(row, "qos").to_string(),
        });
    }
    if tasks.is_empty() {
        return Err(format!("{}: no tasks", t.file));
    }
    models.check(&t.file)?;
    let name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    Ok(Trace { name, tasks })
}
