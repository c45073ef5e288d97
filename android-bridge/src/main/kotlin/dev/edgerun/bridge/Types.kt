package dev.edgerun.bridge

/**
 * One chat turn. [role] is "system", "user", "assistant" or "tool". An assistant turn that called tools
 * carries its [toolCalls] (as answered in [ChatCompletion.toolCalls]); a "tool" turn carries the result of
 * one call as [content] and that call's id as [toolCallId].
 */
data class ChatMessage @JvmOverloads constructor(
    val role: String,
    val content: String,
    val toolCalls: List<ToolCall>? = null,
    val toolCallId: String? = null,
) {
    companion object {
        @JvmStatic fun system(content: String) = ChatMessage("system", content)
        @JvmStatic fun user(content: String) = ChatMessage("user", content)
        @JvmStatic fun assistant(content: String) = ChatMessage("assistant", content)
        /** The assistant turn that made [calls] (feed it back before the tools' results). */
        @JvmStatic fun assistantCalls(calls: List<ToolCall>) = ChatMessage("assistant", "", toolCalls = calls)
        /** The result of the call [toolCallId] (a [ToolCall.id]). */
        @JvmStatic fun tool(toolCallId: String, content: String) = ChatMessage("tool", content, toolCallId = toolCallId)
    }
}

/**
 * A function the model may call (OpenAI's `tools` entry). [parameters] is the JSON Schema of its arguments
 * as a map (e.g. `mapOf("type" to "object", "properties" to ..., "required" to listOf(...))`).
 */
data class Tool @JvmOverloads constructor(
    val name: String,
    val description: String = "",
    val parameters: Map<String, Any?> = mapOf("type" to "object", "properties" to emptyMap<String, Any?>()),
)

/** One call the model made: [arguments] is a JSON object as text, matching the tool's parameters schema. */
data class ToolCall(val id: String, val name: String, val arguments: String) {
    /** [arguments] parsed. */
    fun argumentsMap(): Map<String, Any?> {
        val obj = Json.parse(arguments) as? Map<*, *>
            ?: throw EdgeException.Protocol("tool call arguments are not a JSON object: ${arguments.take(200)}")
        return obj.entries.associate { (k, v) -> k.toString() to v }
    }
}

/**
 * Sampling options of a chat request; null fields are left to the runtime's defaults (the model's
 * recommended sampling, and a random seed reported as [ChatCompletion.seed]).
 * [model] null means [EdgeClient.defaultChatModel]. temperature 0 is greedy (deterministic).
 * [tools] the model may call; [toolChoice] is "auto" (default with tools), "none", "required" or the name
 * of the one tool it must call. Calls come back in [ChatCompletion.toolCalls] (not through [EdgeClient.chatStream]).
 */
data class ChatOptions @JvmOverloads constructor(
    val model: String? = null,
    val maxTokens: Int? = null,
    val temperature: Double? = null,
    val topP: Double? = null,
    val seed: Long? = null,
    val stop: List<String>? = null,
    val tools: List<Tool>? = null,
    val toolChoice: String? = null,
)

/** Token counts of a finished chat (OpenAI `usage`). */
data class Usage(val promptTokens: Int, val completionTokens: Int, val totalTokens: Int)

/**
 * A non-streamed chat answer: its [text], why it stopped ("stop" | "length" | "tool_calls"), the token
 * [usage], the [toolCalls] it made (then [text] is empty) and the sampling [seed] it used (pass it back in
 * [ChatOptions.seed] for the same answer), read from the runtime's `system_fingerprint`.
 */
data class ChatCompletion @JvmOverloads constructor(
    val text: String,
    val finishReason: String?,
    val model: String?,
    val usage: Usage?,
    val toolCalls: List<ToolCall> = emptyList(),
    val seed: Long? = null,
)

/** Options of an image request. [model] null lets the runtime pick its image model. */
data class ImageOptions @JvmOverloads constructor(
    val model: String? = null,
    val width: Int = 512,
    val height: Int = 512,
    val steps: Int? = null,
    val seed: Long? = null,
    val guidanceScale: Double? = null,
)

/** A prompt point in image pixels; [label] 1 = foreground (include), 0 = background (exclude). */
data class SegmentPoint @JvmOverloads constructor(val x: Double, val y: Double, val label: Int = 1)

/** A prompt box in image pixels: top-left (x0, y0), bottom-right (x1, y1). */
data class Box(val x0: Double, val y0: Double, val x1: Double, val y1: Double)

/** Options of a segmentation request; [multimask] asks for several candidate masks. */
data class SegmentOptions @JvmOverloads constructor(val model: String? = null, val multimask: Boolean = false)

/**
 * One mask: a PNG ([png], white = inside), the model's quality [score], its [bbox] (x0, y0, x1, y1 in pixels),
 * [area] in pixels, and the run-length encoding as the runtime sent it ([rle], `{"size": [h, w], "counts": ...}`).
 */
class Mask(
    val png: ByteArray,
    val score: Double,
    val bbox: List<Double>?,
    val area: Long?,
    val rle: Map<String, Any?>?,
) {
    override fun toString() = "Mask(score=$score, bbox=$bbox, area=$area, png=${png.size} bytes)"
}

/**
 * A segmentation answer. [imageId] lets later prompts on the same image skip the image encoder
 * (pass it to [EdgeClient.segment] instead of the image); [best] indexes the highest-scoring mask;
 * [encoderRan] says whether this call had to encode the image (false when its embedding was cached).
 */
data class SegmentResult @JvmOverloads constructor(
    val imageId: String?,
    val masks: List<Mask>,
    val best: Int,
    val encoderRan: Boolean? = null,
) {
    val bestMask: Mask get() = masks[best]
}

/** One entry of `/v1/models`. [task] is "chat", "image" or "segment"; [raw] holds every field sent. */
data class ModelInfo(val id: String, val task: String?, val loaded: Boolean, val ownedBy: String?, val raw: Map<String, Any?>)

/** `/health`: [status] is "ok" when the runtime is up; [raw] holds every field sent. */
data class Health(val status: String, val raw: Map<String, Any?>) {
    val ok: Boolean get() = status == "ok"
}

/** Width and height read from a PNG's IHDR chunk (Android has no ImageIO; this needs none). */
data class PngSize(val width: Int, val height: Int) {
    companion object {
        private val SIGNATURE = byteArrayOf(-119, 80, 78, 71, 13, 10, 26, 10)

        /** The size of [png], or null when the bytes are not a PNG. */
        @JvmStatic
        fun of(png: ByteArray): PngSize? {
            if (png.size < 24) return null
            for (k in SIGNATURE.indices) if (png[k] != SIGNATURE[k]) return null
            if (String(png, 12, 4, Charsets.US_ASCII) != "IHDR") return null
            return PngSize(int32(png, 16), int32(png, 20))
        }

        private fun int32(b: ByteArray, o: Int): Int =
            ((b[o].toInt() and 0xFF) shl 24) or ((b[o + 1].toInt() and 0xFF) shl 16) or
                ((b[o + 2].toInt() and 0xFF) shl 8) or (b[o + 3].toInt() and 0xFF)
    }
}
