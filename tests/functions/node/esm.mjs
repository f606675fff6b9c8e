// Ember's Node.js test function as an ES module: invoked as esm.<name>.
import { createHash } from "node:crypto";

export const echo = async (event) => event;

class EmberError extends Error {
    constructor(message) {
        super(message);
        this.name = "EmberError";
    }
}

// The context, from an ES module; with {"throw": true} an error of its own class.
export const context = async (event, context) => {
    if (event.throw) {
        throw new EmberError("from an ES module");
    }
    console.log("esm context of", context.awsRequestId);
    return {
        esm: true,
        awsRequestId: context.awsRequestId,
        functionName: context.functionName,
        functionVersion: context.functionVersion,
        invokedFunctionArn: context.invokedFunctionArn,
        memoryLimitInMB: context.memoryLimitInMB,
        remainingMs: context.getRemainingTimeInMillis(),
        sha256: createHash("sha256").update(JSON.stringify(event)).digest("hex"),
    };
};
