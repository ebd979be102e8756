#include "model/hparams.h"

#include "common/status.h"
#include "common/strings.h"

namespace strata::model {
namespace {

absl::StatusOr<int> GetPositiveInt(const gguf::GgufFile& f, const std::string& key, int64_t max) {
  ASSIGN_OR_RETURN(uint64_t v, f.GetUint(key));
  if (v == 0 || v > static_cast<uint64_t>(max)) {
    return absl::InvalidArgumentError(
        StrCat(f.name(), ": metadata '", key, "' = ", v, " is out of range [1, ", max, "]"));
  }
  return static_cast<int>(v);
}

}  // namespace

absl::StatusOr<HParams> HParams::FromGguf(const gguf::GgufFile& f) {
  HParams hp;
  ASSIGN_OR_RETURN(std::string_view arch, f.GetString("general.architecture"));
  hp.arch_name = std::string(arch);
  if (arch == "llama") {
    hp.arch = Arch::kLlama;
  } else if (arch == "qwen2") {
    hp.arch = Arch::kQwen2;
    hp.rope_neox = true;
    hp.qkv_bias = true;
  } else {
    return absl::InvalidArgumentError(
        StrCat(f.name(), ": architecture '", arch, "' is not supported (llama, qwen2)"));
  }
  if (const gguf::GgufValue* name = f.Find("general.name");
      name && name->type == gguf::GgufType::kString) {
    hp.model_name = std::string(name->str);
  }
  const std::string p = hp.arch_name + ".";
  ASSIGN_OR_RETURN(hp.n_layer, GetPositiveInt(f, p + "block_count", 4096));
  ASSIGN_OR_RETURN(hp.n_embd, GetPositiveInt(f, p + "embedding_length", 1 << 17));
  ASSIGN_OR_RETURN(hp.n_ff, GetPositiveInt(f, p + "feed_forward_length", 1 << 20));
  ASSIGN_OR_RETURN(hp.n_head, GetPositiveInt(f, p + "attention.head_count", 4096));
  hp.n_head_kv = hp.n_head;
  if (f.Find(p + "attention.head_count_kv")) {
    ASSIGN_OR_RETURN(hp.n_head_kv, GetPositiveInt(f, p + "attention.head_count_kv", 4096));
  }
  if (hp.n_head % hp.n_head_kv != 0) {
    return absl::InvalidArgumentError(StrCat(f.name(),
                                             ": ",
                                             hp.n_head,
                                             " attention heads are not a multiple of ",
                                             hp.n_head_kv,
                                             " KV heads"));
  }
  hp.head_dim = hp.n_embd / hp.n_head;
  if (f.Find(p + "attention.key_length")) {
    ASSIGN_OR_RETURN(hp.head_dim, GetPositiveInt(f, p + "attention.key_length", 1 << 12));
  } else if (hp.n_embd % hp.n_head != 0) {
    return absl::InvalidArgumentError(
        StrCat(f.name(), ": width ", hp.n_embd, " is not a multiple of ", hp.n_head, " heads"));
  }
  if (hp.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(StrCat(f.name(), ": head size ", hp.head_dim, " is odd"));
  }
  hp.rot_dim = hp.head_dim;
  if (f.Find(p + "rope.dimension_count")) {
    ASSIGN_OR_RETURN(hp.rot_dim, GetPositiveInt(f, p + "rope.dimension_count", hp.head_dim));
  }
  if (hp.rot_dim % 2 != 0) {
    return absl::InvalidArgumentError(StrCat(f.name(), ": rotary dims ", hp.rot_dim, " odd"));
  }
  ASSIGN_OR_RETURN(double eps, f.GetFloat(p + "attention.layer_norm_rms_epsilon"));
  if (!(eps > 0 && eps < 1)) {
    return absl::InvalidArgumentError(StrCat(f.name(), ": RMS epsilon ", eps, " out of range"));
  }
  hp.rms_eps = static_cast<float>(eps);
  ASSIGN_OR_RETURN(double base, f.GetFloatOr(p + "rope.freq_base", 10000.0));
  if (!(base > 1)) {
    return absl::InvalidArgumentError(StrCat(f.name(), ": RoPE base ", base, " out of range"));
  }
  hp.rope_base = static_cast<float>(base);
  if (const gguf::GgufValue* type = f.Find(p + "rope.scaling.type")) {
    if (type->type != gguf::GgufType::kString) {
      return absl::InvalidArgumentError(StrCat(f.name(), ": rope.scaling.type is not a string"));
    }
    if (type->str == "linear") {
      ASSIGN_OR_RETURN(double factor, f.GetFloat(p + "rope.scaling.factor"));
      if (!(factor >= 1)) {
        return absl::InvalidArgumentError(StrCat(f.name(), ": RoPE factor ", factor));
      }
      hp.rope_freq_scale = static_cast<float>(1.0 / factor);
    } else if (type->str != "none") {
      return absl::InvalidArgumentError(
          StrCat(f.name(), ": RoPE scaling '", type->str, "' is not supported (none, linear)"));
    }
  } else if (f.Find(p + "rope.scale_linear")) {
    ASSIGN_OR_RETURN(double factor, f.GetFloat(p + "rope.scale_linear"));
    if (!(factor >= 1)) return absl::InvalidArgumentError(StrCat(f.name(), ": RoPE factor"));
    hp.rope_freq_scale = static_cast<float>(1.0 / factor);
  }
  ASSIGN_OR_RETURN(hp.n_ctx_train, GetPositiveInt(f, p + "context_length", 1 << 24));

  ASSIGN_OR_RETURN(const gguf::GgufTensorInfo* embd, f.FindTensor("token_embd.weight"));
  if (embd->ndim != 2 || embd->shape[1] != hp.n_embd) {
    return absl::InvalidArgumentError(StrCat(f.name(),
                                             ": token_embd.weight has shape ",
                                             gguf::GgufFile::View(*embd).ShapeString(),
                                             ", expected {vocab, ",
                                             hp.n_embd,
                                             "}"));
  }
  hp.n_vocab = static_cast<int>(embd->shape[0]);
  hp.tied_output = !f.HasTensor("output.weight");
  return hp;
}

}  // namespace strata::model
