// The block's dynamic shared memory, declared in a kernel as
//     RNNATTN_DYNAMIC_SMEM(float4, smem);   // float4* smem / float4 smem[]
// (16-byte aligned; its size is the launch's third <<<>>> argument).
//
// A macro only so that tests/emulation, which runs these kernels on the CPU,
// can define it first (there: the emulated block's buffer); on a GPU it is
// the usual `extern __shared__` array.
#pragma once

#ifndef RNNATTN_DYNAMIC_SMEM
#define RNNATTN_DYNAMIC_SMEM(type, name) extern __shared__ __align__(16) type name[]
#endif
