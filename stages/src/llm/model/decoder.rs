//! The decoder of every family pipe implements (Llama, SmolLM/SmolLM2, Mistral, Qwen2, Qwen3,
//! Gemma-3 text) with a differentiable training forward, a KV-cache path for generation, and
//! LoRA on any projection. Where the families differ, the layers read the architecture's
//! [`Family`] description and the config's per-layer attention pattern.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use crate::llm::decode::kv_cache::KvCache;
use crate::llm::error::{LlmError, LlmResult};
use crate::llm::model::attention::{Attention, AttentionContext, HeadShape};
use crate::llm::model::config::{LayerType, ModelConfig};
use crate::llm::model::family::{Family, NormForm, NormSlot};
use crate::llm::model::frozen_linear::FrozenLinear;
use crate::llm::model::layer::{DecoderLayer, LayerNorms};
use crate::llm::model::lora::{stream_id, LoraConfig, LoraLayer, Mode, TargetModule};
use crate::llm::model::mlp::Mlp;
use crate::llm::model::ops::rms_norm;
use crate::llm::model::projection::Projection;
use crate::llm::model::rope::Rope;
use crate::llm::model::slots::TokenSlots;

/// A decoder built from HF-named tensors. Base weights are frozen; only attached LoRA
/// matrices are trainable ([`LlamaModel::trainable_vars`]).
#[derive(Debug, Clone)]
pub struct LlamaModel {
    config: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    /// The embedding matrix itself when the config ties them.
    lm_head: FrozenLinear,
    rope: Rope,
    /// The rope of sliding-window layers with their own base (Gemma-3).
    local_rope: Option<Rope>,
    /// The LoRA configuration of the attached adapter, if any.
    lora: Option<LoraConfig>,
}

impl LlamaModel {
    /// Builds the model from `tensors` (HF names, e.g. `model.layers.0.self_attn.q_proj.weight`;
    /// all of one float dtype). Missing, mis-shaped and unexpected tensors are errors naming
    /// the tensor, so a config that does not match its weights is caught here.
    pub fn from_tensors(config: &ModelConfig, tensors: HashMap<String, Tensor>) -> LlmResult<Self> {
        validate_config(config)?;
        let mut weights = WeightMap::new(tensors)?;
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed_tokens = weights.take("model.embed_tokens.weight", &[v, h])?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| build_layer(config, &mut weights, i))
            .collect::<LlmResult<Vec<_>>>()?;
        let family = config.architecture.family();
        let norm = applied_norm(&family, weights.take("model.norm.weight", &[h])?)?;
        let lm_head = if config.tie_word_embeddings {
            // HF ignores a stored lm_head when tied; so do we.
            weights.tensors.remove("lm_head.weight");
            FrozenLinear::new("model.embed_tokens.weight", embed_tokens.clone(), None)?
        } else {
            FrozenLinear::new(
                "lm_head.weight",
                weights.take("lm_head.weight", &[v, h])?,
                None,
            )?
        };
        weights.finish()?;
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(config),
            local_rope: Rope::local(config),
            lora: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]` (u32). `attention_mask`
    /// `[batch, seq]` (1 real, 0 padding; any dtype) allows right-padded training batches and
    /// left-padded prompts; `None` means all real.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mode: Mode,
    ) -> LlmResult<Tensor> {
        let hidden = self.hidden_states(input_ids, attention_mask, mode)?;
        self.logits(&hidden)
    }

    /// Final-norm hidden states `[batch, seq, hidden]`; apply [`LlamaModel::logits`] to all or
    /// part of them (losses compute logits chunk by chunk over positions).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mode: Mode,
    ) -> LlmResult<Tensor> {
        let mut slots = TokenSlots::new();
        self.run(input_ids, attention_mask, mode, &mut slots, None, None)
    }

    /// As [`LlamaModel::hidden_states`] with `noise` `[batch, seq, hidden]` added to the input
    /// embeddings: NEFTune (Jain et al. 2023) trains on noisy embeddings, and the noise must
    /// enter after the embedding lookup, inside the forward.
    pub fn hidden_states_with_embedding_noise(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mode: Mode,
        noise: &Tensor,
    ) -> LlmResult<Tensor> {
        let mut slots = TokenSlots::new();
        self.run(
            input_ids,
            attention_mask,
            mode,
            &mut slots,
            None,
            Some(noise),
        )
    }

    /// The lm_head weight `[vocab, hidden]` (the embedding matrix when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.weight()
    }

    /// `lm_head` on hidden states `[..., hidden]` -> `[..., vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> LlmResult<Tensor> {
        Ok(self.lm_head.forward(hidden)?)
    }

    /// An empty cache for [`LlamaModel::forward_cached`].
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Generation step (evaluation mode): runs the new tokens `input_ids` `[batch, t]` through
    /// the model, appending their keys and values to `cache`, and returns their logits
    /// `[batch, t, vocab]`. The first call is the prefill (left-padded prompts with
    /// `attention_mask`), later calls usually pass one token per sequence and no mask.
    /// The logits equal those of a full [`LlamaModel::forward`] over the whole sequence.
    /// After an error the cache is inconsistent and must be dropped.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> LlmResult<Tensor> {
        let mut slots = std::mem::take(cache.slots_mut());
        let hidden = self.run(
            input_ids,
            attention_mask,
            Mode::Eval,
            &mut slots,
            Some(&mut *cache),
            None,
        );
        *cache.slots_mut() = slots;
        self.logits(&hidden?)
    }

    /// As [`LlamaModel::forward_cached`], but only the logits of the last new position,
    /// `[batch, vocab]` (what a sampler needs; skips the lm_head for the rest of a prefill).
    pub fn forward_cached_last(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> LlmResult<Tensor> {
        let hidden = self.run_cached(input_ids, attention_mask, cache)?;
        let last = hidden.dim(1)? - 1;
        self.logits(&hidden.narrow(1, last, 1)?.squeeze(1)?)
    }

    /// Hidden states of the new tokens, their keys and values appended to `cache`.
    fn run_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> LlmResult<Tensor> {
        // The slot table moves out for the call so the layers can borrow the cache mutably.
        let mut slots = std::mem::take(cache.slots_mut());
        let hidden = self.run(
            input_ids,
            attention_mask,
            Mode::Eval,
            &mut slots,
            Some(&mut *cache),
            None,
        );
        *cache.slots_mut() = slots;
        hidden
    }

    /// The shared forward: embeddings, layers, final norm.
    fn run(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mode: Mode,
        slots: &mut TokenSlots,
        mut cache: Option<&mut KvCache>,
        embedding_noise: Option<&Tensor>,
    ) -> LlmResult<Tensor> {
        let (batch, seq) = self.check_ids(input_ids)?;
        let real = real_tokens(attention_mask, (batch, seq))?;
        let positions = slots.append(&real)?;
        let (dtype, device) = (self.dtype(), self.device());
        let config = &self.config;
        let angles = self.rope.angles(&positions, (batch, seq), dtype, device)?;
        let local_angles = match &self.local_rope {
            Some(rope) => Some(rope.angles(&positions, (batch, seq), dtype, device)?),
            None => None,
        };
        let types: Vec<LayerType> = config.resolved_layer_types();
        let mask_for = |kind: LayerType| -> LlmResult<Option<Tensor>> {
            if !types.contains(&kind) {
                return Ok(None);
            }
            let window = match kind {
                LayerType::SlidingAttention => config.sliding_window,
                LayerType::FullAttention => None,
            };
            Ok(Some(slots.additive_mask(seq, window, dtype, device)?))
        };
        let full_mask = mask_for(LayerType::FullAttention)?;
        let sliding_mask = mask_for(LayerType::SlidingAttention)?;
        let mut x = self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((batch, seq, config.hidden_size))?;
        if config.architecture.family().scale_embeddings {
            x = (x * embedding_scale(config.hidden_size))?;
        }
        if let Some(noise) = embedding_noise {
            if noise.dims() != x.dims() {
                return Err(LlmError::Invalid(format!(
                    "embedding noise has shape {:?}, the embeddings {:?}",
                    noise.dims(),
                    x.dims()
                )));
            }
            x = (x + noise.to_dtype(dtype)?)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let (mask, layer_angles) = match types[i] {
                LayerType::FullAttention => (full_mask.as_ref(), &angles),
                LayerType::SlidingAttention => (
                    sliding_mask.as_ref(),
                    local_angles.as_ref().unwrap_or(&angles),
                ),
            };
            let mask = mask.ok_or_else(|| {
                LlmError::Invalid(format!("layer {i}: no attention mask was built"))
            })?;
            let cx = AttentionContext {
                angles: layer_angles,
                mask,
                mode,
            };
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = layer.forward(&x, &cx, layer_cache)?;
        }
        Ok(rms_norm(&x, &self.norm, config.rms_norm_eps)?)
    }

    /// `[batch, seq]` u32 ids, all below the vocabulary size.
    fn check_ids(&self, input_ids: &Tensor) -> LlmResult<(usize, usize)> {
        let (batch, seq) = input_ids.dims2().map_err(|_| {
            LlmError::Invalid(format!(
                "input_ids must be [batch, seq], got shape {:?}",
                input_ids.dims()
            ))
        })?;
        if input_ids.dtype() != DType::U32 {
            return Err(LlmError::Invalid(format!(
                "input_ids must be u32, got {:?}",
                input_ids.dtype()
            )));
        }
        if batch == 0 || seq == 0 {
            return Err(LlmError::Invalid(format!(
                "input_ids is empty (shape [{batch}, {seq}])"
            )));
        }
        let max = input_ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max as usize >= self.config.vocab_size {
            return Err(LlmError::Invalid(format!(
                "token id {max} is outside the vocabulary of {} tokens",
                self.config.vocab_size
            )));
        }
        Ok((batch, seq))
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The projection `module` of `layer`.
    pub fn projection(&self, layer: usize, module: TargetModule) -> LlmResult<&Projection> {
        self.layers
            .get(layer)
            .map(|l| l.projection(module))
            .ok_or_else(|| self.no_layer(layer))
    }

    fn no_layer(&self, layer: usize) -> LlmError {
        LlmError::Invalid(format!(
            "layer {layer} does not exist: the model has {} layers",
            self.layers.len()
        ))
    }

    /// Attaches a freshly initialised LoRA (A seeded by `config.seed`, B zero) to every target
    /// module of every layer, replacing any attached adapter (merge it first to keep it).
    pub fn attach_lora(&mut self, config: &LoraConfig) -> LlmResult<()> {
        config.validate()?;
        self.remove_lora();
        let (dtype, device) = (self.dtype(), self.device().clone());
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for &module in &config.target_modules {
                let projection = layer.projection_mut(module);
                let lora = LoraLayer::init(
                    config,
                    projection.shape(),
                    stream_id(i, module),
                    dtype,
                    &device,
                )?;
                projection.set_lora(lora);
            }
        }
        self.lora = Some(config.clone());
        Ok(())
    }

    /// Attaches given LoRA weights to one projection (A `[r, in]`, B `[out, r]`), e.g. from a
    /// PEFT file; `config` describes the whole adapter.
    pub fn attach_lora_weights(
        &mut self,
        config: &LoraConfig,
        layer: usize,
        module: TargetModule,
        a: &Tensor,
        b: &Tensor,
    ) -> LlmResult<()> {
        let name = module.module_path(layer);
        let (dtype, device) = (self.dtype(), self.device().clone());
        let projection = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| LlmError::Tensor {
                name: name.clone(),
                message: format!("the model has no layer {layer}"),
            })?
            .projection_mut(module);
        let (out_f, in_f) = projection.shape();
        check_shape(&format!("{name}.lora_A.weight"), a, &[config.r, in_f])?;
        check_shape(&format!("{name}.lora_B.weight"), b, &[out_f, config.r])?;
        let lora = LoraLayer::from_weights(
            a.to_dtype(dtype)?.to_device(&device)?,
            b.to_dtype(dtype)?.to_device(&device)?,
            config.scale(),
            config.dropout,
            stream_id(layer, module),
        )?;
        projection.set_lora(lora);
        self.lora = Some(config.clone());
        Ok(())
    }

    /// The configuration of the attached LoRA, if any.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// Every attached LoRA layer with its place, in layer then module order.
    pub fn lora_layers(&self) -> Vec<(usize, TargetModule, &LoraLayer)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for module in TargetModule::ALL {
                if let Some(lora) = layer.projection(module).lora() {
                    out.push((i, module, lora));
                }
            }
        }
        out
    }

    /// The trainable parameters (LoRA A and B of every adapted projection), for an optimizer.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.lora_layers()
            .into_iter()
            .flat_map(|(_, _, l)| [l.a().clone(), l.b().clone()])
            .collect()
    }

    /// Folds every attached LoRA into its base weight (`W' = W + scale·B·A`) and detaches it.
    pub fn merge_lora(&mut self) -> LlmResult<()> {
        for layer in &mut self.layers {
            for module in TargetModule::ALL {
                let projection = layer.projection_mut(module);
                if let Some(lora) = projection.take_lora() {
                    projection.add_to_weight(&lora.delta_weight()?)?;
                }
            }
        }
        self.lora = None;
        Ok(())
    }

    /// Adds `delta` `[out, in]` to the base weight of one projection.
    pub fn add_to_weight(
        &mut self,
        layer: usize,
        module: TargetModule,
        delta: &Tensor,
    ) -> LlmResult<()> {
        let name = format!("{}.weight", module.module_path(layer));
        let projection = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| LlmError::Tensor {
                name: name.clone(),
                message: format!("the model has no layer {layer}"),
            })?
            .projection_mut(module);
        let (out_f, in_f) = projection.shape();
        check_shape(&name, delta, &[out_f, in_f])?;
        projection.add_to_weight(delta)?;
        Ok(())
    }

    /// Keeps 8-bit copies of every frozen weight (the projections and the lm_head) for decode
    /// steps, which stream all weights per token and are bound by memory bandwidth: about 4x
    /// fewer bytes than f32; exact for weights on a GGUF block grid, otherwise within 0.2% of
    /// each 32-weight block's range. An attached LoRA stays unmerged beside the copies (its
    /// factors in f32). Prefill and training keep using the exact weights. Returns the bytes
    /// added.
    pub fn pack_for_decode(&mut self) -> LlmResult<usize> {
        let mut bytes = 0;
        for layer in &mut self.layers {
            for module in TargetModule::ALL {
                bytes += layer.projection_mut(module).pack_for_decode()?;
            }
        }
        self.lm_head.pack_for_decode()?;
        Ok(bytes + self.lm_head.packed_bytes())
    }

    /// Drops the 8-bit decode copies: decoding uses the exact weights again.
    pub fn unpack(&mut self) {
        for layer in &mut self.layers {
            for module in TargetModule::ALL {
                layer.projection_mut(module).base_mut().unpack();
            }
        }
        self.lm_head.unpack();
    }

    /// Detaches every LoRA without merging it.
    pub fn remove_lora(&mut self) {
        for layer in &mut self.layers {
            for module in TargetModule::ALL {
                layer.projection_mut(module).take_lora();
            }
        }
        self.lora = None;
    }

    /// The current base weights under their HF names (including merged adapters; attached,
    /// unmerged LoRA is not included), e.g. for exporting an HF directory.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        out.insert(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        );
        let family = self.config.architecture.family();
        for (i, layer) in self.layers.iter().enumerate() {
            let prefix = format!("model.layers.{i}");
            for &(slot, name) in family.layer_norms {
                if let Some(w) = layer.norm(slot) {
                    out.insert(format!("{prefix}.{name}.weight"), stored_norm(&family, w));
                }
            }
            for module in TargetModule::ALL {
                let base = layer.projection(module).base();
                let path = module.module_path(i);
                out.insert(format!("{path}.weight"), base.weight().clone());
                if let Some(b) = base.bias() {
                    out.insert(format!("{path}.bias"), b.clone());
                }
            }
        }
        out.insert(
            "model.norm.weight".to_string(),
            stored_norm(&family, &self.norm),
        );
        if !self.config.tie_word_embeddings {
            out.insert("lm_head.weight".to_string(), self.lm_head.weight().clone());
        }
        out
    }
}

/// Refuses configs the forward cannot run, before any tensor is looked at.
fn validate_config(c: &ModelConfig) -> LlmResult<()> {
    let problem = if c.num_attention_heads == 0 || c.num_key_value_heads == 0 {
        Some("num_attention_heads and num_key_value_heads must be positive".to_string())
    } else if !c.num_attention_heads.is_multiple_of(c.num_key_value_heads) {
        Some(format!(
            "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
            c.num_attention_heads, c.num_key_value_heads
        ))
    } else if c.head_dim == 0 || !c.head_dim.is_multiple_of(2) {
        Some(format!(
            "head_dim must be even and positive for rope, got {}",
            c.head_dim
        ))
    } else if c.vocab_size == 0 || c.hidden_size == 0 || c.intermediate_size == 0 {
        Some("vocab_size, hidden_size and intermediate_size must be positive".to_string())
    } else if !(c.rope_theta.is_finite() && c.rope_theta > 0.0) {
        Some(format!("rope_theta must be positive, got {}", c.rope_theta))
    } else {
        None
    };
    match problem {
        Some(p) => Err(LlmError::Invalid(format!("model config: {p}"))),
        None => Ok(()),
    }
}

fn build_layer(config: &ModelConfig, weights: &mut WeightMap, i: usize) -> LlmResult<DecoderLayer> {
    let h = config.hidden_size;
    let q_out = config.num_attention_heads * config.head_dim;
    let kv_out = config.num_key_value_heads * config.head_dim;
    let inter = config.intermediate_size;
    let bias = config.attention_bias;
    let family = config.architecture.family();
    let prefix = format!("model.layers.{i}");
    let mut norm = |slot: NormSlot| -> LlmResult<Option<Tensor>> {
        let Some(name) = family.hf_name(slot) else {
            return Ok(None);
        };
        let width = if slot.per_head() { config.head_dim } else { h };
        let w = weights.take(&format!("{prefix}.{name}.weight"), &[width])?;
        Ok(Some(applied_norm(&family, w)?))
    };
    let input = norm(NormSlot::Input)?;
    let post_attention = norm(NormSlot::PostAttention)?;
    let pre_feedforward = norm(NormSlot::PreFeedforward)?;
    let post_feedforward = norm(NormSlot::PostFeedforward)?;
    let q_norm = norm(NormSlot::Query)?;
    let k_norm = norm(NormSlot::Key)?;
    let required = |t: Option<Tensor>, slot: NormSlot| {
        t.ok_or_else(|| {
            LlmError::Invalid(format!(
                "{} layers have no {slot:?} norm",
                config.architecture.model_type()
            ))
        })
    };
    let norms = LayerNorms {
        input: required(input, NormSlot::Input)?,
        post_attention,
        pre_feedforward: required(pre_feedforward, NormSlot::PreFeedforward)?,
        post_feedforward,
    };
    let mut proj =
        |module: TargetModule, shape: [usize; 2], with_bias: bool| -> LlmResult<Projection> {
            let name = format!("{}.weight", module.module_path(i));
            let weight = weights.take(&name, &shape)?;
            let bias = if with_bias {
                Some(weights.take(&format!("{}.bias", module.module_path(i)), &shape[..1])?)
            } else {
                None
            };
            Ok(Projection::new(FrozenLinear::new(&name, weight, bias)?))
        };
    let attention = Attention::new(
        [
            proj(TargetModule::QProj, [q_out, h], bias)?,
            proj(TargetModule::KProj, [kv_out, h], bias)?,
            proj(TargetModule::VProj, [kv_out, h], bias)?,
            proj(TargetModule::OProj, [h, q_out], false)?,
        ],
        [q_norm, k_norm],
        HeadShape {
            num_heads: config.num_attention_heads,
            num_kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            scale: config.attention_scale(),
            norm_eps: config.rms_norm_eps,
        },
    );
    let mlp = Mlp::new(
        [
            proj(TargetModule::GateProj, [inter, h], false)?,
            proj(TargetModule::UpProj, [inter, h], false)?,
            proj(TargetModule::DownProj, [h, inter], false)?,
        ],
        family.activation,
    );
    Ok(DecoderLayer::new(
        norms,
        attention,
        mlp,
        config.rms_norm_eps,
    ))
}

/// A norm weight as the kernels apply it: Gemma's stored `w` becomes `1 + w` (computed in the
/// weight's dtype, as transformers does), so one RMSNorm serves every family.
fn applied_norm(family: &Family, stored: Tensor) -> LlmResult<Tensor> {
    Ok(match family.norm {
        NormForm::Weight => stored,
        NormForm::OnePlusWeight => (stored + 1.0)?,
    })
}

/// The inverse of [`applied_norm`]: the weight as checkpoints store it.
fn stored_norm(family: &Family, applied: &Tensor) -> Tensor {
    match family.norm {
        NormForm::Weight => applied.clone(),
        NormForm::OnePlusWeight => (applied - 1.0).unwrap_or_else(|_| applied.clone()),
    }
}

/// Gemma's embedding scale `sqrt(hidden)`, rounded to f32 as transformers stores it (a float32
/// buffer cast to the weights' dtype).
fn embedding_scale(hidden: usize) -> f64 {
    f64::from((hidden as f64).sqrt() as f32)
}

/// The input tensors, taken one by one with shape checks; whatever is left over is an error.
struct WeightMap {
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: Device,
}

impl WeightMap {
    fn new(tensors: HashMap<String, Tensor>) -> LlmResult<Self> {
        let embed = tensors
            .get("model.embed_tokens.weight")
            .ok_or_else(|| LlmError::Tensor {
                name: "model.embed_tokens.weight".into(),
                message: "missing from the model weights".into(),
            })?;
        let (dtype, device) = (embed.dtype(), embed.device().clone());
        // The CPU kernels (softmax, log1mexp) and the finite attention mask value assume f32
        // or f64; half precision on CPU would be slow and lossy anyway.
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(LlmError::Tensor {
                name: "model.embed_tokens.weight".into(),
                message: format!("dtype {dtype:?} is not supported: load the weights as f32"),
            });
        }
        Ok(Self {
            tensors,
            dtype,
            device,
        })
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> LlmResult<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| LlmError::Tensor {
            name: name.to_string(),
            message: "missing from the model weights (does the config match the checkpoint?)"
                .into(),
        })?;
        check_shape(name, &t, shape)?;
        if t.dtype() != self.dtype {
            return Err(LlmError::Tensor {
                name: name.to_string(),
                message: format!(
                    "dtype {:?} differs from the embedding's {:?}; load all weights in one dtype",
                    t.dtype(),
                    self.dtype
                ),
            });
        }
        Ok(t.to_device(&self.device)?)
    }

    /// Errors on tensors nobody took (buffers HF may store, like `rotary_emb.inv_freq`, are
    /// recomputed and skipped).
    fn finish(self) -> LlmResult<()> {
        let mut extra: Vec<String> = self
            .tensors
            .into_keys()
            .filter(|k| !k.ends_with("rotary_emb.inv_freq"))
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        extra.sort();
        let shown = extra.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        Err(LlmError::Tensor {
            name: extra[0].clone(),
            message: format!(
                "{} tensor(s) not used by the model config (e.g. {shown}); does the config match the checkpoint?",
                extra.len()
            ),
        })
    }
}

fn check_shape(name: &str, t: &Tensor, shape: &[usize]) -> LlmResult<()> {
    if t.dims() == shape {
        Ok(())
    } else {
        Err(LlmError::Tensor {
            name: name.to_string(),
            message: format!("expected shape {shape:?}, got {:?}", t.dims()),
        })
    }
}

/// `real[b][j]` from an attention mask `[batch, seq]` (non-zero = real), all real without one.
fn real_tokens(mask: Option<&Tensor>, (batch, seq): (usize, usize)) -> LlmResult<Vec<Vec<bool>>> {
    let Some(mask) = mask else {
        return Ok(vec![vec![true; seq]; batch]);
    };
    if mask.dims() != [batch, seq] {
        return Err(LlmError::Invalid(format!(
            "attention_mask has shape {:?}, input_ids [{batch}, {seq}]",
            mask.dims()
        )));
    }
    let rows = mask.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(|v| v != 0.0).collect())
        .collect())
}
