//! Which key/value slots hold real tokens and at which positions, per sequence: the one source
//! for rope positions and attention masks, so right-padded training batches, left-padded
//! generation batches and the KV cache all follow the same rules.

use candle_core::{DType, Device, Result, Tensor};

use crate::llm::model::ops::MASK_VALUE;

/// Per sequence, per slot: `Some(position)` for a real token, `None` for padding.
#[derive(Debug, Clone, Default)]
pub struct TokenSlots {
    rows: Vec<Vec<Option<u32>>>,
}

impl TokenSlots {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of slots (the same for every sequence).
    pub fn len(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of sequences, or `None` before the first append.
    pub fn batch_size(&self) -> Option<usize> {
        (!self.rows.is_empty()).then_some(self.rows.len())
    }

    /// Keeps only the sequences at `rows` (valid indices, in the new order).
    pub fn retain_rows(&mut self, rows: &[usize]) {
        self.rows = rows.iter().map(|&r| self.rows[r].clone()).collect();
    }

    /// Appends one step of tokens (`real[b][j]`: whether token j of sequence b is real) and
    /// returns their rope positions, row-major. Real tokens continue their sequence's count
    /// (HF's `cumsum(mask) - 1`); a padding token gets the position of the previous real one
    /// (any value works: nothing attends to it).
    pub fn append(&mut self, real: &[Vec<bool>]) -> Result<Vec<u32>> {
        if self.rows.is_empty() {
            self.rows = vec![Vec::new(); real.len()];
        }
        if real.len() != self.rows.len() {
            candle_core::bail!(
                "batch of {} sequences, but the cache holds {}",
                real.len(),
                self.rows.len()
            )
        }
        let mut positions = Vec::new();
        for (row, step) in self.rows.iter_mut().zip(real) {
            let mut next = row.iter().flatten().count() as u32;
            for &is_real in step {
                if is_real {
                    row.push(Some(next));
                    positions.push(next);
                    next += 1;
                } else {
                    row.push(None);
                    positions.push(next.saturating_sub(1));
                }
            }
        }
        Ok(positions)
    }

    /// Additive mask `[batch, 1, 1, queries, slots]` (broadcasts over kv heads and the query
    /// heads sharing them) for the last `queries` slots attending to every slot: causal, no
    /// padding keys, and keys at most `sliding_window - 1` positions back when set.
    pub fn additive_mask(
        &self,
        queries: usize,
        sliding_window: Option<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let slots = self.len();
        if queries > slots {
            candle_core::bail!("{queries} queries but only {slots} slots")
        }
        let first_query = slots - queries;
        let mut mask = Vec::with_capacity(self.rows.len() * queries * slots);
        for row in &self.rows {
            for q in first_query..slots {
                for (k, key) in row.iter().enumerate() {
                    let allowed = match (*key, row[q]) {
                        (None, _) => false,
                        _ if k > q => false,
                        (Some(kp), Some(qp)) => sliding_window.is_none_or(|w| (qp - kp) < w as u32),
                        (Some(_), None) => true,
                    };
                    mask.push(if allowed { 0.0 } else { MASK_VALUE });
                }
            }
        }
        Tensor::from_vec(mask, (self.rows.len(), 1, 1, queries, slots), device)?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(mask: &Tensor) -> Vec<Vec<bool>> {
        let (_, _, _, q, s) = mask.dims5().unwrap();
        let v = mask.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        v.chunks(s)
            .take(q)
            .map(|r| r.iter().map(|&x| x == 0.0).collect())
            .collect()
    }

    #[test]
    fn right_padding_is_causal_and_hides_padding() -> Result<()> {
        let mut slots = TokenSlots::new();
        let pos = slots.append(&[vec![true, true, false]])?;
        assert_eq!(pos, vec![0, 1, 1]);
        let m = allowed(&slots.additive_mask(3, None, DType::F64, &Device::Cpu)?);
        assert_eq!(m[0], vec![true, false, false]);
        assert_eq!(m[1], vec![true, true, false]);
        assert_eq!(m[2], vec![true, true, false]);
        Ok(())
    }

    #[test]
    fn left_padding_positions_start_at_first_real_token_and_steps_continue() -> Result<()> {
        let mut slots = TokenSlots::new();
        assert_eq!(slots.append(&[vec![false, true, true]])?, vec![0, 0, 1]);
        assert_eq!(slots.append(&[vec![true]])?, vec![2]);
        let m = allowed(&slots.additive_mask(1, None, DType::F64, &Device::Cpu)?);
        assert_eq!(m[0], vec![false, true, true, true]);
        assert!(slots.append(&[vec![true], vec![true]]).is_err());
        Ok(())
    }

    #[test]
    fn sliding_window_limits_how_far_back_keys_are_seen() -> Result<()> {
        let mut slots = TokenSlots::new();
        slots.append(&[vec![true; 4]])?;
        let m = allowed(&slots.additive_mask(4, Some(2), DType::F64, &Device::Cpu)?);
        assert_eq!(m[3], vec![false, false, true, true]);
        Ok(())
    }
}
