//! Sampling and the train/val split: seeded by a hash of each row, so they are stable across
//! platforms and adding rows does not reshuffle the others; stratified by category on request.

use std::collections::BTreeMap;

use super::artifact::Example;

/// A seeded rank for a row: ordering by it is a shuffle that depends only on the seed and the
/// row's content, so it is stable across platforms and library versions, and adding rows to
/// the file does not reshuffle the ones already there.
pub(super) fn rank_key(seed: u64, purpose: &[u8], example: &Example) -> ([u8; 32], u64) {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(purpose);
    hasher.update(example.id.as_bytes());
    (*hasher.finalize().as_bytes(), example.source_row)
}

/// Keeps a seeded sample of `max` rows, in file order.
pub(super) fn sample(rows: Vec<Example>, max: usize, seed: u64) -> Vec<Example> {
    if rows.len() <= max {
        return rows;
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_cached_key(|&i| rank_key(seed, b"sample", &rows[i]));
    let mut keep = vec![false; rows.len()];
    for &i in &order[..max] {
        keep[i] = true;
    }
    rows.into_iter()
        .zip(keep)
        .filter_map(|(row, k)| k.then_some(row))
        .collect()
}

/// How many rows of each group go to val: `fraction` of the total overall (largest-remainder
/// apportionment), and at least one row of every group of two or more, which also keeps at
/// least one in train. Single-row groups go to train unless val would otherwise stay short.
pub(super) fn val_quotas(sizes: &[usize], fraction: f64) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    if total < 2 {
        return vec![0; sizes.len()];
    }
    let target = ((total as f64 * fraction).round() as usize).clamp(1, total - 1);
    let exact: Vec<f64> = sizes.iter().map(|&n| n as f64 * fraction).collect();
    let mut quotas: Vec<usize> = sizes
        .iter()
        .zip(&exact)
        .map(|(&n, &e)| {
            if n >= 2 {
                (e.floor() as usize).clamp(1, n - 1)
            } else {
                0
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let lo = |n: usize| usize::from(n >= 2);
    let mut assigned: usize = quotas.iter().sum();
    // The one-row minimums can overshoot the target: give rows back from the groups whose
    // share was rounded least, never below their minimum.
    while assigned > target {
        let mut progressed = false;
        for &i in order.iter().rev() {
            if assigned > target && quotas[i] > lo(sizes[i]) {
                quotas[i] -= 1;
                assigned -= 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    // Then top up by largest remainder; single-row groups only if nothing else has room.
    for singletons_too in [false, true] {
        let room = |i: usize, q: usize| match sizes[i] {
            n if n >= 2 => q < n - 1,
            1 => singletons_too && q == 0,
            _ => false,
        };
        while assigned < target {
            let mut progressed = false;
            for &i in &order {
                if assigned < target && room(i, quotas[i]) {
                    quotas[i] += 1;
                    assigned += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }
    quotas
}

/// Marks which rows go to val: seeded, stratified by category when `stratify`.
pub(super) fn split(rows: &[Example], fraction: f64, stratify: bool, seed: u64) -> Vec<bool> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let key = if stratify {
            row.category.as_deref().unwrap_or("")
        } else {
            ""
        };
        groups.entry(key).or_default().push(i);
    }
    let sizes: Vec<usize> = groups.values().map(Vec::len).collect();
    let quotas = val_quotas(&sizes, fraction);
    let mut is_val = vec![false; rows.len()];
    for (mut members, quota) in groups.into_values().zip(quotas) {
        members.sort_by_cached_key(|&i| rank_key(seed, b"split", &rows[i]));
        for &i in &members[..quota] {
            is_val[i] = true;
        }
    }
    is_val
}
