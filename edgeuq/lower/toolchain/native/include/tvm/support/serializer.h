// edgeuq: the Serializer templates live in io.h (see there); this header only forwards to it.
#ifndef EDGEUQ_TVM_SUPPORT_SERIALIZER_H_
#define EDGEUQ_TVM_SUPPORT_SERIALIZER_H_
#include <tvm/support/io.h>
#endif  // EDGEUQ_TVM_SUPPORT_SERIALIZER_H_
