// A tokenizer vocabulary for models the project writes itself.
#pragma once

#include "gguf/writer.h"

namespace strata::text {

// Writes a byte-level BPE vocabulary of `vocab` tokens (at least 258) without merges: the 256
// byte symbols, <|im_start|> (256, also BOS) and <|im_end|> (257, EOS), then unused fillers, with
// a chatml template. Enough for the tokenizer, chat formatting and generation on models the
// project writes itself (test and benchmark models with random weights).
void SetByteLevelVocab(gguf::GgufWriter& w, int vocab);

}  // namespace strata::text
