package cabi

/*
#cgo CFLAGS: -I${SRCDIR}
#include <stddef.h>
#include "weft.h"

// Size followed by field offsets, in declaration order, of the structs core mirrors in Go.
static const size_t weft_layout_str[] = {sizeof(WeftStr), offsetof(WeftStr, off), offsetof(WeftStr, len)};
static const size_t weft_layout_header[] = {sizeof(WeftHeader),
	offsetof(WeftHeader, name), offsetof(WeftHeader, value)};
static const size_t weft_layout_mutation[] = {sizeof(WeftMutation), offsetof(WeftMutation, op),
	offsetof(WeftMutation, arg), offsetof(WeftMutation, a_len), offsetof(WeftMutation, b_len)};
static const size_t weft_layout_buf[] = {sizeof(WeftBuf), offsetof(WeftBuf, ptr), offsetof(WeftBuf, cap),
	offsetof(WeftBuf, len)};
static const size_t weft_layout_view[] = {sizeof(WeftRequestView),
	offsetof(WeftRequestView, size), offsetof(WeftRequestView, phase),
	offsetof(WeftRequestView, request_id), offsetof(WeftRequestView, slot),
	offsetof(WeftRequestView, generation), offsetof(WeftRequestView, method),
	offsetof(WeftRequestView, path), offsetof(WeftRequestView, query),
	offsetof(WeftRequestView, host), offsetof(WeftRequestView, client_addr),
	offsetof(WeftRequestView, scheme), offsetof(WeftRequestView, version),
	offsetof(WeftRequestView, req_headers_off), offsetof(WeftRequestView, req_header_count),
	offsetof(WeftRequestView, status), offsetof(WeftRequestView, resp_headers_off),
	offsetof(WeftRequestView, resp_header_count), offsetof(WeftRequestView, call),
	offsetof(WeftRequestView, body), offsetof(WeftRequestView, body_len), offsetof(WeftRequestView, body_flags),
	offsetof(WeftRequestView, server_name)};
static const size_t weft_layout_job[] = {sizeof(WeftJob), offsetof(WeftJob, slot), offsetof(WeftJob, generation),
	offsetof(WeftJob, instance), offsetof(WeftJob, phase), offsetof(WeftJob, call), offsetof(WeftJob, out_slot),
	offsetof(WeftJob, out_off)};

static size_t weft_layout(int which, int i) {
	switch (which) {
	case 0: return weft_layout_str[i];
	case 1: return weft_layout_header[i];
	case 2: return weft_layout_mutation[i];
	case 3: return weft_layout_buf[i];
	case 4: return weft_layout_view[i];
	case 5: return weft_layout_job[i];
	}
	return (size_t)-1;
}
*/
import "C"

import "github.com/weftrs/weft/cgo/internal/core"

// cLayout returns the size and field offsets of the C struct number which (see weft_layout)
// with n fields, as the C compiler lays it out. Used by the layout test.
func cLayout(which, n int) []uintptr {
	out := make([]uintptr, n+1)
	for i := range out {
		out[i] = uintptr(C.weft_layout(C.int(which), C.int(i)))
	}
	return out
}

// cConstants returns the values weft.h gives the constants core mirrors, keyed by the Go
// value they must equal. Used by the layout test.
func cConstants() map[string][2]uint64 {
	return map[string][2]uint64{
		"WEFT_ABI_VERSION":                        {C.WEFT_ABI_VERSION, core.ABIVersion},
		"WEFT_RUNTIME_NATIVE":                     {C.WEFT_RUNTIME_NATIVE, core.RuntimeNative},
		"WEFT_RUNTIME_GO":                         {C.WEFT_RUNTIME_GO, core.RuntimeGo},
		"WEFT_LOG_ERROR":                          {C.WEFT_LOG_ERROR, uint64(core.LogError)},
		"WEFT_LOG_WARN":                           {C.WEFT_LOG_WARN, uint64(core.LogWarn)},
		"WEFT_LOG_INFO":                           {C.WEFT_LOG_INFO, uint64(core.LogInfo)},
		"WEFT_LOG_DEBUG":                          {C.WEFT_LOG_DEBUG, uint64(core.LogDebug)},
		"WEFT_PHASE_MASK_REQUEST_HEADERS":         {C.WEFT_PHASE_MASK_REQUEST_HEADERS, uint64(core.PhaseRequestHeaders.Mask())},
		"WEFT_PHASE_MASK_RESPONSE_HEADERS":        {C.WEFT_PHASE_MASK_RESPONSE_HEADERS, uint64(core.PhaseResponseHeaders.Mask())},
		"WEFT_PHASE_MASK_LOG":                     {C.WEFT_PHASE_MASK_LOG, uint64(core.PhaseLog.Mask())},
		"WEFT_PHASE_REQUEST_HEADERS":              {C.WEFT_PHASE_REQUEST_HEADERS, uint64(core.PhaseRequestHeaders)},
		"WEFT_PHASE_REQUEST_BODY":                 {C.WEFT_PHASE_REQUEST_BODY, uint64(core.PhaseRequestBody)},
		"WEFT_PHASE_RESPONSE_HEADERS":             {C.WEFT_PHASE_RESPONSE_HEADERS, uint64(core.PhaseResponseHeaders)},
		"WEFT_PHASE_RESPONSE_BODY":                {C.WEFT_PHASE_RESPONSE_BODY, uint64(core.PhaseResponseBody)},
		"WEFT_PHASE_LOG":                          {C.WEFT_PHASE_LOG, uint64(core.PhaseLog)},
		"WEFT_RESULT_OK":                          {C.WEFT_RESULT_OK, uint64(core.ResultOK)},
		"WEFT_RESULT_PANIC":                       {C.WEFT_RESULT_PANIC, uint64(core.ResultPanic)},
		"WEFT_RESULT_INVALID_ARGUMENT":            {C.WEFT_RESULT_INVALID_ARGUMENT, uint64(core.ResultInvalidArgument)},
		"WEFT_RESULT_UNKNOWN_PLUGIN":              {C.WEFT_RESULT_UNKNOWN_PLUGIN, uint64(core.ResultUnknownPlugin)},
		"WEFT_RESULT_MUTATION_OVERFLOW":           {C.WEFT_RESULT_MUTATION_OVERFLOW, uint64(core.ResultMutationOverflow)},
		"WEFT_RESULT_INIT_FAILED":                 {C.WEFT_RESULT_INIT_FAILED, uint64(core.ResultInitFailed)},
		"WEFT_RESULT_ABI_MISMATCH":                {C.WEFT_RESULT_ABI_MISMATCH, uint64(core.ResultABIMismatch)},
		"WEFT_RESULT_UNSUPPORTED_PHASE":           {C.WEFT_RESULT_UNSUPPORTED_PHASE, uint64(core.ResultUnsupportedPhase)},
		"WEFT_RESULT_INVALID_MUTATION":            {C.WEFT_RESULT_INVALID_MUTATION, uint64(core.ResultInvalidMutation)},
		"WEFT_RESULT_HANDLER_FAILED":              {C.WEFT_RESULT_HANDLER_FAILED, uint64(core.ResultHandlerFailed)},
		"WEFT_RESULT_INTERNAL":                    {C.WEFT_RESULT_INTERNAL, uint64(core.ResultInternal)},
		"WEFT_RESULT_PENDING":                     {C.WEFT_RESULT_PENDING, uint64(core.ResultPending)},
		"WEFT_RESULT_STALE_HANDLE":                {C.WEFT_RESULT_STALE_HANDLE, uint64(core.ResultStaleHandle)},
		"WEFT_RESULT_ALREADY_COMPLETED":           {C.WEFT_RESULT_ALREADY_COMPLETED, uint64(core.ResultAlreadyCompleted)},
		"WEFT_RESULT_CANCELLED":                   {C.WEFT_RESULT_CANCELLED, uint64(core.ResultCancelled)},
		"WEFT_RESULT_BUSY":                        {C.WEFT_RESULT_BUSY, uint64(core.ResultBusy)},
		"WEFT_PLUGIN_FLAG_BLOCKING":               {C.WEFT_PLUGIN_FLAG_BLOCKING, core.FlagBlocking},
		"WEFT_PHASE_WEB_SOCKET_OPEN":              {C.WEFT_PHASE_WEB_SOCKET_OPEN, uint64(core.PhaseWebSocketOpen)},
		"WEFT_PHASE_WEB_SOCKET_MESSAGE":           {C.WEFT_PHASE_WEB_SOCKET_MESSAGE, uint64(core.PhaseWebSocketMessage)},
		"WEFT_PHASE_WEB_SOCKET_CLOSE":             {C.WEFT_PHASE_WEB_SOCKET_CLOSE, uint64(core.PhaseWebSocketClose)},
		"WEFT_PHASE_MASK_WEBSOCKET_OPEN":          {C.WEFT_PHASE_MASK_WEBSOCKET_OPEN, uint64(core.PhaseWebSocketOpen.Mask())},
		"WEFT_PHASE_MASK_WEBSOCKET_MESSAGE":       {C.WEFT_PHASE_MASK_WEBSOCKET_MESSAGE, uint64(core.PhaseWebSocketMessage.Mask())},
		"WEFT_PHASE_MASK_WEBSOCKET_CLOSE":         {C.WEFT_PHASE_MASK_WEBSOCKET_CLOSE, uint64(core.PhaseWebSocketClose.Mask())},
		"WEFT_WS_BINARY":                          {C.WEFT_WS_BINARY, core.WSBinary},
		"WEFT_WS_ERROR":                           {C.WEFT_WS_ERROR, core.WSError},
		"WEFT_MUTATION_OP_WS_SEND_TEXT":           {C.WEFT_MUTATION_OP_WS_SEND_TEXT, uint64(core.OpWSSendText)},
		"WEFT_MUTATION_OP_WS_SEND_BINARY":         {C.WEFT_MUTATION_OP_WS_SEND_BINARY, uint64(core.OpWSSendBinary)},
		"WEFT_MUTATION_OP_WS_CLOSE":               {C.WEFT_MUTATION_OP_WS_CLOSE, uint64(core.OpWSClose)},
		"WEFT_MUTATION_OP_WS_JOIN_ROOM":           {C.WEFT_MUTATION_OP_WS_JOIN_ROOM, uint64(core.OpWSJoinRoom)},
		"WEFT_MUTATION_OP_WS_LEAVE_ROOM":          {C.WEFT_MUTATION_OP_WS_LEAVE_ROOM, uint64(core.OpWSLeaveRoom)},
		"WEFT_MUTATION_OP_WS_BROADCAST_TEXT":      {C.WEFT_MUTATION_OP_WS_BROADCAST_TEXT, uint64(core.OpWSBroadcastText)},
		"WEFT_MUTATION_OP_WS_BROADCAST_BINARY":    {C.WEFT_MUTATION_OP_WS_BROADCAST_BINARY, uint64(core.OpWSBroadcastBinary)},
		"WEFT_MUTATION_OP_SET_REQUEST_HEADER":     {C.WEFT_MUTATION_OP_SET_REQUEST_HEADER, uint64(core.OpSetRequestHeader)},
		"WEFT_MUTATION_OP_ADD_REQUEST_HEADER":     {C.WEFT_MUTATION_OP_ADD_REQUEST_HEADER, uint64(core.OpAddRequestHeader)},
		"WEFT_MUTATION_OP_REMOVE_REQUEST_HEADER":  {C.WEFT_MUTATION_OP_REMOVE_REQUEST_HEADER, uint64(core.OpRemoveRequestHeader)},
		"WEFT_MUTATION_OP_SET_PATH":               {C.WEFT_MUTATION_OP_SET_PATH, uint64(core.OpSetPath)},
		"WEFT_MUTATION_OP_SET_QUERY":              {C.WEFT_MUTATION_OP_SET_QUERY, uint64(core.OpSetQuery)},
		"WEFT_MUTATION_OP_SET_RESPONSE_HEADER":    {C.WEFT_MUTATION_OP_SET_RESPONSE_HEADER, uint64(core.OpSetResponseHeader)},
		"WEFT_MUTATION_OP_ADD_RESPONSE_HEADER":    {C.WEFT_MUTATION_OP_ADD_RESPONSE_HEADER, uint64(core.OpAddResponseHeader)},
		"WEFT_MUTATION_OP_REMOVE_RESPONSE_HEADER": {C.WEFT_MUTATION_OP_REMOVE_RESPONSE_HEADER, uint64(core.OpRemoveResponseHeader)},
		"WEFT_MUTATION_OP_SET_STATUS":             {C.WEFT_MUTATION_OP_SET_STATUS, uint64(core.OpSetStatus)},
		"WEFT_MUTATION_OP_LOCAL_REPLY":            {C.WEFT_MUTATION_OP_LOCAL_REPLY, uint64(core.OpLocalReply)},
		"WEFT_MUTATION_OP_LOCAL_REPLY_HEADER":     {C.WEFT_MUTATION_OP_LOCAL_REPLY_HEADER, uint64(core.OpLocalReplyHeader)},
		"WEFT_MUTATION_OP_BODY_REPLACE":           {C.WEFT_MUTATION_OP_BODY_REPLACE, uint64(core.OpBodyReplace)},
		"WEFT_MUTATION_OP_BODY_PREPEND":           {C.WEFT_MUTATION_OP_BODY_PREPEND, uint64(core.OpBodyPrepend)},
		"WEFT_MUTATION_OP_BODY_APPEND":            {C.WEFT_MUTATION_OP_BODY_APPEND, uint64(core.OpBodyAppend)},
		"WEFT_MUTATION_OP_BODY_DROP":              {C.WEFT_MUTATION_OP_BODY_DROP, uint64(core.OpBodyDrop)},
		"WEFT_MUTATION_OP_SKIP_BODY":              {C.WEFT_MUTATION_OP_SKIP_BODY, uint64(core.OpSkipBody)},
		"WEFT_BODY_END_OF_STREAM":                 {C.WEFT_BODY_END_OF_STREAM, core.BodyEndOfStream},
		"WEFT_BODY_BUFFERED":                      {C.WEFT_BODY_BUFFERED, core.BodyBuffered},
		"WEFT_PLUGIN_FLAG_REQUEST_BODY_BUFFERED":  {C.WEFT_PLUGIN_FLAG_REQUEST_BODY_BUFFERED, core.FlagRequestBodyBuffered},
		"WEFT_PLUGIN_FLAG_RESPONSE_BODY_BUFFERED": {C.WEFT_PLUGIN_FLAG_RESPONSE_BODY_BUFFERED, core.FlagResponseBodyBuffered},
		"WEFT_PHASE_MASK_REQUEST_BODY":            {C.WEFT_PHASE_MASK_REQUEST_BODY, uint64(core.PhaseRequestBody.Mask())},
		"WEFT_PHASE_MASK_RESPONSE_BODY":           {C.WEFT_PHASE_MASK_RESPONSE_BODY, uint64(core.PhaseResponseBody.Mask())},
		"WEFT_MAX_MUTATION_RECORDS":               {C.WEFT_MAX_MUTATION_RECORDS, core.MaxMutationRecords},
		"WEFT_MAX_HEADER_NAME_LEN":                {C.WEFT_MAX_HEADER_NAME_LEN, core.MaxHeaderNameLen},
		"WEFT_MAX_HEADER_VALUE_LEN":               {C.WEFT_MAX_HEADER_VALUE_LEN, core.MaxHeaderValueLen},
		"WEFT_MAX_VIEW_HEADERS":                   {C.WEFT_MAX_VIEW_HEADERS, core.MaxViewHeaders},
		"WEFT_MAX_PATH_LEN":                       {C.WEFT_MAX_PATH_LEN, core.MaxPathLen},
		"WEFT_MAX_WS_ROOM_LEN":                    {C.WEFT_MAX_WS_ROOM_LEN, core.MaxWSRoomLen},
	}
}

// cRingConstants returns the worker-ring layout as weft.h gives it (every WEFT_RING_* constant),
// keyed by name, next to the value of core's pure-Go copy. Used by the layout test.
func cRingConstants() map[string][2]uint64 {
	return map[string][2]uint64{
		"WEFT_RING_MAGIC":              {C.WEFT_RING_MAGIC, core.RingMagic},
		"WEFT_RING_VERSION":            {C.WEFT_RING_VERSION, core.RingVersion},
		"WEFT_RING_MAX_CAPACITY":       {C.WEFT_RING_MAX_CAPACITY, core.RingMaxCapacity},
		"WEFT_RING_DESC_SIZE":          {C.WEFT_RING_DESC_SIZE, core.SizeofJob},
		"WEFT_RING_OFFSET_MAGIC":       {C.WEFT_RING_OFFSET_MAGIC, core.RingOffsetMagic},
		"WEFT_RING_OFFSET_VERSION":     {C.WEFT_RING_OFFSET_VERSION, core.RingOffsetVersion},
		"WEFT_RING_OFFSET_CAPACITY":    {C.WEFT_RING_OFFSET_CAPACITY, core.RingOffsetCapacity},
		"WEFT_RING_OFFSET_DESC_SIZE":   {C.WEFT_RING_OFFSET_DESC_SIZE, core.RingOffsetDescSize},
		"WEFT_RING_OFFSET_CLOSED":      {C.WEFT_RING_OFFSET_CLOSED, core.RingOffsetClosed},
		"WEFT_RING_OFFSET_RING_ID":     {C.WEFT_RING_OFFSET_RING_ID, core.RingOffsetRingID},
		"WEFT_RING_OFFSET_TAIL":        {C.WEFT_RING_OFFSET_TAIL, core.RingOffsetTail},
		"WEFT_RING_OFFSET_HEAD":        {C.WEFT_RING_OFFSET_HEAD, core.RingOffsetHead},
		"WEFT_RING_OFFSET_WAITING":     {C.WEFT_RING_OFFSET_WAITING, core.RingOffsetWaiting},
		"WEFT_RING_OFFSET_DESCRIPTORS": {C.WEFT_RING_OFFSET_DESCRIPTORS, core.RingOffsetDescriptors},
	}
}
